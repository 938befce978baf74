//! Configuration errors and where they are in the file text: line, column
//! and the line itself, for messages of the form `FILE:LINE:COL: key `x`:
//! reason`. Shared by the agent and the collector config loaders.

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
        ConfigError::Invalid { path: path.to_path_buf(), line, column, message, snippet }
    }
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
}
