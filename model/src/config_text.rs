//! Configuration errors and where they are in the file text: line, column
//! and the line itself, for messages of the form `FILE:LINE:COL: key `x`:
//! reason`. Shared by the agent and the collector config loaders.
//!
//! Every located error goes through [`ConfigError::at`], which redacts the
//! values of secret-named keys (see [`is_secret_key`]) and the credentials of
//! URLs from both the quoted line and the message: a token or password typed
//! into a config file never comes back in an error, whichever binary and
//! command (`check-config`, `serve`, `run`) reads the file.

use std::path::{Path, PathBuf};

/// A configuration error, already formatted for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}\n  | {snippet}")]
    Invalid { path: PathBuf, line: usize, column: usize, message: String, snippet: String },
    /// An error with no file to point at (command-line values, no config file).
    #[error("{0}")]
    Value(String),
}

impl ConfigError {
    /// The error at byte `offset` of `text`, read from `path`.
    pub fn at(path: &Path, text: &str, offset: usize, message: String) -> ConfigError {
        let (line, column, snippet) = locate(text, offset);
        let (snippet, values) = redact_line(&snippet);
        let message = redact_message(&message, &values);
        ConfigError::Invalid { path: path.to_path_buf(), line, column, message, snippet }
    }
}

/// Parts of key names that mark a key whose value is a secret, or may be one
/// typed by mistake: `token_sha256` holds a hash, but the token itself pasted
/// there is the usual mistake, and a short token's hash is guessable offline.
const SECRET_KEY_PARTS: [&str; 9] =
    ["token", "password", "passwd", "secret", "api_key", "apikey", "credential", "private_key", "auth"];

/// Whether `key` (a bare, quoted or dotted TOML key) holds a secret inline.
/// Keys ending in `_file` hold the path of a file, which errors do show.
pub fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key).trim().trim_matches(|c| c == '"' || c == '\'');
    let k = last.to_ascii_lowercase();
    !k.ends_with("_file") && SECRET_KEY_PARTS.iter().any(|p| k.contains(p))
}

/// `line` with the value of every secret-named `key = value` on it (also
/// inside inline tables) replaced by `<redacted>`, and the credentials of any
/// URL on it (`scheme://user:password@`) likewise; with the texts it removed,
/// so that a message quoting them can be redacted too.
pub fn redact_line(line: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(line.len());
    let mut removed = Vec::new();
    let mut rest = line;
    while let Some(eq) = rest.find('=') {
        let (before, after) = rest.split_at(eq);
        let key = before.trim_end().rsplit(|c: char| c == '{' || c == ',' || c.is_whitespace()).next().unwrap_or("");
        out.push_str(before);
        out.push('=');
        let after = &after[1..];
        if is_secret_key(key) {
            let end = value_end(after);
            let value = after[..end].trim();
            if !value.is_empty() {
                removed.push(value.to_string());
                if value.starts_with(['{', '[']) {
                    // A table or array: each string in it too.
                    removed.extend(
                        value.split(['"', '\'']).skip(1).step_by(2).filter(|v| !v.is_empty()).map(str::to_string),
                    );
                }
                let inner = value.trim_matches(|c| c == '"' || c == '\'');
                if !inner.is_empty() && inner != value {
                    removed.push(inner.to_string());
                }
            }
            out.push_str(" <redacted>");
            rest = &after[end..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    let (out, urls) = redact_url_credentials(&out);
    removed.extend(urls);
    (out, removed)
}

/// Byte length of the value that starts `s` (after `=`): a quoted string to
/// its closing quote, else up to the next `,` or `}` (inline tables) or `#`.
fn value_end(s: &str) -> usize {
    let t = s.trim_start();
    let lead = s.len() - t.len();
    let mut chars = t.char_indices();
    match chars.next() {
        // A table or an array: the rest of the line.
        Some((_, '{' | '[')) => s.len(),
        Some((_, q @ ('"' | '\''))) => {
            let mut escaped = false;
            for (i, c) in chars {
                if q == '"' && c == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                if c == q && !escaped {
                    return lead + i + 1;
                }
                escaped = false;
            }
            s.len()
        }
        _ => t.find([',', '}', '#']).map(|i| lead + i).unwrap_or(s.len()),
    }
}

/// `text` with the `user:password@` of every `scheme://user:password@host`
/// replaced by `<redacted>@`, and the credentials it removed.
fn redact_url_credentials(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut removed = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end =
            tail.find(|c: char| c == '/' || c == '"' || c == '\'' || c.is_whitespace()).unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &tail[..at];
                removed.push(userinfo.to_string());
                if let Some((_, password)) = userinfo.split_once(':')
                    && !password.is_empty()
                {
                    removed.push(password.to_string());
                }
                out.push_str("<redacted>");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    (out, removed)
}

/// `message` with every text in `values` and URL credentials redacted, and,
/// when `values` is not empty (the line held a secret), every double-quoted
/// string in it too: serde's messages quote a value as `string "…"` after
/// unescaping it, which need not match the raw text on the line.
pub fn redact_message(message: &str, values: &[String]) -> String {
    let mut m = message.to_string();
    for v in values {
        if !v.is_empty() {
            m = m.replace(v.as_str(), "<redacted>");
        }
    }
    if !values.is_empty() {
        let mut out = String::with_capacity(m.len());
        let mut parts = m.split('"');
        if let Some(first) = parts.next() {
            out.push_str(first);
        }
        for (i, part) in parts.enumerate() {
            out.push('"');
            out.push_str(if i % 2 == 0 { "<redacted>" } else { part });
        }
        m = out;
    }
    redact_url_credentials(&m).0
}

/// `(line, column, line text)` of a byte offset (1-based line and column).
pub fn locate(text: &str, offset: usize) -> (usize, usize, String) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    let snippet = text[line_start..].lines().next().unwrap_or("").to_string();
    (line, column, snippet)
}

/// Byte offset of the first line assigning `key` (`key = …`), or 0.
pub fn find_key(text: &str, key: &str) -> usize {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return offset + (line.len() - t.len());
        }
        offset += line.len();
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_keys() {
        let t = "a = 1\n[x]\n  key = \"é\"\n";
        assert_eq!(locate(t, find_key(t, "key")), (3, 3, "  key = \"é\"".to_string()));
        assert_eq!(locate(t, 0), (1, 1, "a = 1".to_string()));
        assert_eq!(find_key(t, "missing"), 0);
        assert_eq!(locate(t, 10_000).0, 4);
    }

    #[test]
    fn secret_keys_are_recognised_and_paths_are_not() {
        for k in ["token", "password", "token_sha256", "read_token_sha256", "api_key", "\"Password\"", "push.token"] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["token_file", "password_file", "api_key_file", "bearer_token_file", "url", "username", "db", "id"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn a_secret_value_is_redacted_from_the_line_and_the_message() {
        let text = "[push]\npassword = \"s3cr3t-pw\"\n";
        let e = ConfigError::at(
            Path::new("/etc/a.toml"),
            text,
            find_key(text, "password"),
            "invalid type: string \"s3cr3t-pw\", expected a table".into(),
        );
        let shown = e.to_string();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.starts_with("/etc/a.toml:2:1: invalid type: string <redacted>, expected"), "{shown}");
        assert!(shown.ends_with("  | password = <redacted>"), "{shown}");
    }

    #[test]
    fn every_secret_shape_on_a_line_is_redacted() {
        let cases = [
            ("token = \"tok-1234\"", "token = <redacted>", "tok-1234"),
            ("  token_sha256 = 'pasted-token-9'  # oops", "  token_sha256 = <redacted>  # oops", "pasted-token-9"),
            ("auth = { user = \"bob\", password = \"pw-x9\" }", "auth = <redacted>", "pw-x9"),
            ("password = \"a\\\"b-q7\" # c", "password = <redacted> # c", "a\\\"b-q7"),
            ("m = { password = \"pw-77\", x = 1 }", "m = { password = <redacted>, x = 1 }", "pw-77"),
            ("api_key=abc123", "api_key= <redacted>", "abc123"),
            ("url = \"https://bob:hunter2@bmc.example/x\"", "url = \"https://<redacted>@bmc.example/x\"", "hunter2"),
        ];
        for (line, want, secret) in cases {
            let (got, removed) = redact_line(line);
            assert_eq!(got, want, "{line}");
            assert!(!got.contains(secret), "{got}");
            let msg = redact_message(&format!("bad value `{secret}` and \"{secret}\""), &removed);
            assert!(!msg.contains(secret), "{line}: {msg}");
        }
        // Lines with no secret are shown as they are, and their messages too.
        let (got, removed) = redact_line("token_file = \"/etc/t\" # see \"x\"");
        assert_eq!(got, "token_file = \"/etc/t\" # see \"x\"");
        assert!(removed.is_empty());
        assert_eq!(redact_message("invalid type: string \"a\"", &removed), "invalid type: string \"a\"");
    }

    proptest::proptest! {
        #[test]
        fn no_secret_value_survives(key in "(token|password|api_key|secret|read_token_sha256)",
                                    value in "S[!#-&(-~]{4,40}Z", indent in " {0,4}", trail in "( # note)?") {
            let text = format!("[x]\n{indent}{key} = \"{value}\"{trail}\n");
            let e = ConfigError::at(Path::new("c.toml"), &text, find_key(&text, &key),
                format!("key `x.{key}`: invalid value \"{value}\""));
            let shown = e.to_string();
            let expected = format!("c.toml:2:{}: key `x.{key}`", indent.len() + 1);
            proptest::prop_assert!(!shown.contains(&value), "{}", shown);
            proptest::prop_assert!(shown.starts_with(&expected), "{}", shown);
            proptest::prop_assert!(shown.contains(&format!("| {indent}{key} = <redacted>")), "{}", shown);
        }
    }
}
