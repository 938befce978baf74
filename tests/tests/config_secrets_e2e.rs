//! Secrets and the files a configuration names, through the real binaries:
//! every one is read and checked before `serve` binds (a bad one fails
//! `serve` and `check-config` alike, with the file, line and key), and both
//! binaries' `check-config` show a secret the same way, never its value.

use std::net::TcpListener;
use std::process::Command;

use domesday_tests::{assert_no_secrets, binary};

/// The site's write token in the configurations of these tests.
const SITE_TOKEN: &str = "site-token-3f0e2a";

/// The collector's config with `[carbon]` on Electricity Maps whose key is `key_file`.
fn carbon_config(dir: &std::path::Path, port: u16, key_file: &std::path::Path) -> std::path::PathBuf {
    std::fs::write(dir.join("t"), format!("{SITE_TOKEN}\n")).expect("token");
    let p = dir.join("collector.toml");
    std::fs::write(
        &p,
        format!(
            r#"listen = "127.0.0.1:{port}"
db = {db:?}

[carbon]
source = "electricitymaps"
grid_zone = "DE"
fallback_g_per_kwh = 380.0
basis = "lifecycle"
api_key_file = {key:?}

[[sites]]
id = "caen-1"
timezone = "Europe/Paris"
token_file = {t:?}
"#,
            db = dir.join("domesday.db").display().to_string(),
            key = key_file.display().to_string(),
            t = dir.join("t").display().to_string(),
        ),
    )
    .expect("config");
    p
}

fn collector(args: &[&str], config: &std::path::Path) -> (Option<i32>, String, String) {
    let out = domesday_tests::collector_output(
        Command::new(binary("domesday-collector")).args(args).arg("--config").arg(config).env("DOMESDAY_LOG", "info"),
        config.parent().expect("the config's directory"),
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_api_key_file_fails_serve_before_it_binds_and_check_config_alike() {
    let dir = tempfile::tempdir().expect("tmp");
    // The port is held here: a collector that bound before reading its key would fail on
    // the port ("cannot listen"), not on the key.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let missing = dir.path().join("electricitymaps.key");
    let cfg = carbon_config(dir.path(), port, &missing);

    let (code, _, err) = collector(&["serve"], &cfg);
    assert_eq!(code, Some(2), "{err}");
    let mut seen = err.clone();
    // File and line of the key (line 9 of the config), the key, the file it names, and why.
    assert!(err.contains("collector.toml:9:"), "{err}");
    assert!(err.contains("api_key_file") && err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("cannot read"), "{err}");
    assert!(!err.contains("cannot listen") && !err.contains("serving"), "serve went on to bind: {err}");
    assert!(!dir.path().join("domesday.db").exists(), "serve opened the ledger before refusing its config");

    let (code, out, err) = collector(&["check-config"], &cfg);
    seen.push_str(&format!("{out}{err}"));
    assert_eq!(code, Some(2), "check-config accepted a missing key file: {out}");
    assert!(err.contains("collector.toml:9:") && err.contains("api_key_file") && err.contains("cannot read"), "{err}");

    // An empty key file is refused the same way.
    std::fs::write(&missing, "\n").expect("key");
    let (code, _, err) = collector(&["serve"], &cfg);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("collector.toml:9:") && err.contains("is empty"), "{err}");
    drop(held);
    seen.push_str(&err);
    assert_no_secrets(&[("collector serve, check-config", &seen)], &[SITE_TOKEN]);
}

#[test]
fn both_binaries_show_a_secret_the_same_way_and_never_its_value() {
    let dir = tempfile::tempdir().expect("tmp");
    const KEY: &str = "em-key-9b1f3c";
    const TOKEN: &str = "push-token-77aa01";
    let key = dir.path().join("em.key");
    std::fs::write(&key, format!("{KEY}\n")).expect("key");
    let cfg = carbon_config(dir.path(), 1, &key);
    let (code, out_c, err) = collector(&["check-config"], &cfg);
    let out = out_c.clone();
    assert_eq!(code, Some(0), "{err}");
    let collector_line =
        format!("# carbon.api_key: <redacted>, {} bytes, from api_key_file {}", KEY.len(), key.display());
    assert!(out.contains(&collector_line), "{out}");
    assert!(!out.contains(KEY) && !out.contains("***"), "{out}");

    let token = dir.path().join("push.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "site = \"caen-1\"\nhost = \"h\"\n\n[push]\nurl = \"http://127.0.0.1:1/api/v1/write\"\ntoken_file = {:?}\n",
            token.display().to_string()
        ),
    )
    .expect("agent config");
    let out = domesday_tests::agent_output(
        Command::new(binary("domesday-agent"))
            .args(["check-config", "--config"])
            .arg(&agent_cfg)
            .env_remove("DOMESDAY_PUSH_TOKEN"),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let agent_line = format!("# token: <redacted>, {} bytes, from token_file {}", TOKEN.len(), token.display());
    assert!(text.contains(&agent_line), "{text}");
    assert!(!text.contains(TOKEN) && !text.contains("***"), "{text}");
    let agent_err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_no_secrets(
        &[("collector check-config", &format!("{out_c}{err}")), ("agent check-config", &format!("{text}{agent_err}"))],
        &[KEY, TOKEN, SITE_TOKEN],
    );
}

/// Runs `bin` with `args` and `--config config` (bounded: a binary that started
/// instead of refusing its config is killed after 10 s), and returns its exit
/// code and everything it printed.
fn run_bounded(bin: &str, args: &[&str], config: &std::path::Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(binary(bin));
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env("DOMESDAY_LOG", "debug")
        .env_remove("DOMESDAY_PUSH_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // The output is checked for the secrets its command names (the callers check the secrets it must not echo).
    let secrets = domesday_tests::Secrets::of(&cmd);
    let mut child = cmd.spawn().expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    secrets.check_output(&format!("{bin} {}", args.join(" ")), &out);
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Runs `bin` with each of `cmds` on `config`: each refuses it (exit 2) with every one of `want` in its output and
/// never `secret` nor its last 8 characters; the outputs are added to `seen`.
fn refused_without_echo(
    bin: &str,
    cmds: [&str; 2],
    config: &std::path::Path,
    secret: &str,
    want: &[&str],
    seen: &mut Vec<(String, String)>,
) {
    for cmd in cmds {
        let (code, out) = run_bounded(bin, &[cmd], config);
        assert_eq!(code, Some(2), "{bin} {cmd} did not refuse the config: {out}");
        let tail = &secret[secret.len() - 8..];
        assert!(!out.contains(secret) && !out.contains(tail), "{bin} {cmd} echoed the secret: {out}");
        for w in want {
            assert!(out.contains(w), "{bin} {cmd}: {w:?} missing from\n{out}");
        }
        seen.push((format!("{bin} {cmd}"), out));
    }
}

#[test]
fn a_config_error_on_a_line_holding_a_secret_never_prints_the_value() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut seen: Vec<(String, String)> = Vec::new();
    const AGENT_SECRET: &str = "agent-Pw-5e1f9a0c";
    const SITE_SECRET: &str = "site-Tok-77c2d4e1";
    const URL_SECRET: &str = "bmc-Pw-0d9e8f";

    // The agent: a token written inline where only token_file is allowed.
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "site = \"caen-1\"\nhost = \"h\"\n\n[push]\nurl = \"http://127.0.0.1:1/api/v1/write\"\ntoken = \"{AGENT_SECRET}\"\n"
        ),
    )
    .expect("agent config");
    let want = ["agent.toml:6:", "token = <redacted>"];
    refused_without_echo("domesday-agent", ["check-config", "run"], &agent_cfg, AGENT_SECRET, &want, &mut seen);

    // The collector, on line 7 of its configuration: the token itself pasted into token_sha256 (redacted where
    // the line is quoted), and a URL carrying credentials on a line whose error is a parse error.
    let cfg = dir.path().join("collector.toml");
    let port = domesday_tests::free_port();
    let db = dir.path().join("domesday.db").display().to_string();
    for (line, secret, want) in [
        (format!("token_sha256 = \"{SITE_SECRET}\""), SITE_SECRET, "token_sha256 = <redacted>"),
        (format!("homepage = \"https://bob:{URL_SECRET}@example.net\""), URL_SECRET, "homepage"),
    ] {
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndb = {db:?}\n\n[[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\n{line}\n"
            ),
        )
        .expect("config");
        let want = ["collector.toml:7:", want];
        refused_without_echo("domesday-collector", ["check-config", "serve"], &cfg, secret, &want, &mut seen);
    }
    let named: Vec<(&str, &str)> = seen.iter().map(|(n, o)| (n.as_str(), o.as_str())).collect();
    assert_no_secrets(&named, &[AGENT_SECRET, SITE_SECRET, URL_SECRET]);
}

/// An agent holding a token file, made to fail every way that prints a path, a line or an answer: a collector
/// that refuses its token (401), a collector that is not there, a token file a header cannot carry, a private
/// key in the token file's place and the token file in the key's. Each failure names the file, the key or the
/// URL; no output shows the token or a key line (the helpers check the agents' logs, this checks them all).
#[test]
fn an_agent_failing_to_push_or_to_load_names_the_token_file_and_never_prints_the_token() {
    use domesday_tests::{
        Collector, TestPki, agent_output, fixture_copy, free_port, push_table, read_log, start_agent_logged_with,
        wait_for_log, write_agent_config,
    };
    use std::time::Duration;
    const RIGHT: &str = "site-token-right-4c2e9b";
    const WRONG: &str = "agent-token-wrong-81d7f3";
    let dir = tempfile::tempdir().expect("tmp");
    let collector = Collector::start(dir.path(), free_port(), RIGHT);
    let (_fx, root) = fixture_copy("intel-2s");
    let pki = TestPki::new(&root.join("pki"));
    let mut seen: Vec<(String, String)> = Vec::new();
    let env = [("DOMESDAY_LOG", "trace")];

    // A token the collector does not know: 401, rejected, said with the status and the collector's answer.
    let url = format!("{:?}", collector.url("/api/v1/write"));
    let tables = push_table(&root, WRONG, &url, "interval = \"200ms\"\n");
    let log = root.join("agent-401.log");
    let agent = start_agent_logged_with(&root, free_port(), "100ms", &tables, &env, &log, &["--site", "caen-1"]);
    wait_for_log(&log, "rejected a request", Duration::from_secs(30));
    drop(agent);
    let text = read_log(&log);
    let line = text.lines().find(|l| l.contains("rejected a request")).unwrap_or_default();
    let file = format!("token_file {}", root.join("push.token").display());
    assert!(line.contains("status=401") && line.contains(&file), "the token file is not named: {line}");
    seen.push(("agent run, 401".into(), text));
    // What the helpers' check (run when `agent` was dropped) searched that log for: the token among them.
    let cmd = domesday_tests::agent_command(&root, &root.join("agent.toml"), 0, "1s", &[]);
    let searched = domesday_tests::Secrets::of(&cmd).values();
    assert!(searched.iter().any(|(k, v)| v == WRONG && k.contains("token_file")), "the token is not searched for");

    // No collector: the connection error names the URL.
    let closed = free_port();
    let tables = push_table(&root, WRONG, &format!("\"http://127.0.0.1:{closed}/api/v1/write\""), "");
    let log = root.join("agent-down.log");
    let agent = start_agent_logged_with(&root, free_port(), "100ms", &tables, &env, &log, &["--site", "caen-1"]);
    wait_for_log(&log, "does not take data", Duration::from_secs(30));
    drop(agent);
    let text = read_log(&log);
    assert!(text.contains(&format!("127.0.0.1:{closed}")), "the URL is not named:\n{text}");
    seen.push(("agent run, collector down".into(), text));

    // Files in the wrong place: `check-config` and `run` refuse them with file:line, the key and the file.
    let token = root.join("push.token").display().to_string();
    let key = pki.path("client.key").display().to_string();
    let cert = pki.path("client.crt").display().to_string();
    let push = |token_file: &str, more: &str| format!("[push]\nurl = {url}\ntoken_file = {token_file:?}\n{more}");
    std::fs::write(root.join("push.token"), format!("{WRONG} and more\n")).expect("token");
    let good = root.join("good.token").display().to_string();
    std::fs::write(&good, format!("{WRONG}\n")).expect("token");
    for (config, want) in [
        // Line 7: token_file (after four lines of write_agent_config, `[push]` and `url`); a space in the token.
        (push(&token, ""), ["agent.toml:7:", "push.token_file", "not printable ASCII"]),
        // A private key where the token should be.
        (push(&key, ""), ["agent.toml:7:", "push.token_file", "client.key"]),
        // The token file where the key should be (line 9: key_file).
        (
            push(&good, &format!("cert_file = {cert:?}\nkey_file = {good:?}\n")),
            ["agent.toml:9:", "push.key_file", "good.token"],
        ),
    ] {
        let cfg = write_agent_config(&root, &config);
        for cmd in ["check-config", "run"] {
            let out = agent_output(
                std::process::Command::new(binary("domesday-agent"))
                    .args([cmd, "--config"])
                    .arg(&cfg)
                    .args(["--listen", &format!("127.0.0.1:{}", free_port())])
                    .env("DOMESDAY_LOG", "trace")
                    .env_remove("DOMESDAY_PUSH_TOKEN"),
            );
            let text = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.code(), Some(2), "agent {cmd} accepted {config}: {text}");
            for w in want {
                assert!(text.contains(w), "agent {cmd}: {w:?} missing from\n{text}");
            }
            seen.push((format!("agent {cmd}"), text + &String::from_utf8_lossy(&out.stdout)));
        }
    }
    drop(collector);
    let keys = pki.key_lines();
    let mut secrets: Vec<&str> = keys.iter().map(String::as_str).collect();
    secrets.extend([RIGHT, WRONG]);
    let named: Vec<(&str, &str)> = seen.iter().map(|(n, o)| (n.as_str(), o.as_str())).collect();
    assert_no_secrets(&named, &secrets);
}
