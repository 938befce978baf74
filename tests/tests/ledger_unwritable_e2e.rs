//! `serve` on a ledger it cannot write refuses to start, with the reason and
//! a non-zero exit, instead of answering `/healthz` and failing every write.
//!
//! File modes are what makes a ledger unwritable here; root ignores them, so
//! when the tests run as root the collector runs as `nobody` (uid 65534) over
//! files owned by root, which is the same refusal an unprivileged collector
//! meets in production.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use domesday_tests::{Secrets, binary, collector_config, free_port};

const NOBODY: u32 = 65_534;

fn as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Gives `p` to the user the collector runs as.
fn give(p: &Path) {
    if as_root() {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
}

/// Runs `serve` (as `nobody` when root) for at most 15 s; its exit code (None:
/// it was still running) and stderr, and whether `/healthz` answered meanwhile. Its stdout and stderr are checked
/// for the secrets of its configuration.
fn serve(config: &Path, port: u16) -> (Option<i32>, String, bool) {
    let mut cmd = Command::new(binary("domesday-collector"));
    cmd.arg("serve").arg("--config").arg(config).stdout(Stdio::piped()).stderr(Stdio::piped());
    let secrets = Secrets::of(&cmd);
    if as_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let mut child = cmd.spawn().expect("spawn collector");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut healthy = false;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if !healthy && let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            healthy = r.starts_with("HTTP/1.1 200");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().expect("output");
    secrets.check_output("collector serve", &out);
    (code, String::from_utf8_lossy(&out.stderr).into_owned(), healthy)
}

/// A directory with a config and a ledger created by a first `serve`, stopped
/// cleanly (so no `-wal` is left), all readable by the collector's user.
fn ledger_dir() -> (tempfile::TempDir, std::path::PathBuf, u16) {
    let dir = tempfile::tempdir().expect("tmp");
    chmod(dir.path(), 0o755);
    let port = free_port();
    let config = collector_config(dir.path(), port, "unwritable-ledger-token", "");
    for f in ["collector.toml", "caen.token", "rouen.token"] {
        give(&dir.path().join(f));
        chmod(&dir.path().join(f), 0o600);
    }
    let st = Command::new("sqlite3")
        .arg(dir.path().join("domesday.db"))
        .arg("PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(x); DROP TABLE t;")
        .stdout(Stdio::null())
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        // No sqlite3 here: let a first serve create it, stopped right after.
        give(dir.path());
        let (code, err, healthy) = serve(&config, port);
        assert!(code.is_none() && healthy, "the first serve did not start: {err}");
    }
    (dir, config, port)
}

fn assert_refused(case: &str, config: &Path, port: u16, needle: &str) {
    let (code, err, healthy) = serve(config, port);
    assert_eq!(code, Some(2), "{case}: serve did not refuse with exit 2: {err}");
    assert!(!healthy, "{case}: serve answered /healthz: {err}");
    assert!(err.contains("domesday.db") && err.contains(needle), "{case}: unclear error: {err}");
}

#[test]
fn serve_refuses_a_write_protected_ledger_file() {
    let (dir, config, port) = ledger_dir();
    let db = dir.path().join("domesday.db");
    // The directory is the collector's, the file is not writable by it.
    give(dir.path());
    chmod(&db, 0o444);
    assert_refused("read-only file", &config, port, "read-only");

    // The same with its -wal and -shm files present and writable.
    for f in ["domesday.db-wal", "domesday.db-shm"] {
        std::fs::write(dir.path().join(f), b"").expect("wal");
        give(&dir.path().join(f));
    }
    assert_refused("read-only file with its WAL", &config, port, "read-only");

    // Given back its write access, the same ledger serves.
    give(&db);
    chmod(&db, 0o644);
    let (code, err, healthy) = serve(&config, port);
    assert!(code.is_none() && healthy, "a writable ledger was refused: {err}");
}

#[test]
fn serve_refuses_a_ledger_in_a_read_only_directory() {
    let (dir, config, port) = ledger_dir();
    let db = dir.path().join("domesday.db");
    // The file is the collector's, the directory is not writable by it.
    give(&db);
    chmod(dir.path(), 0o555);
    assert_refused("read-only directory", &config, port, "");

    // With its -wal and -shm files present and writable, SQLite could write
    // until they must be created again: refused all the same, on the directory.
    chmod(dir.path(), 0o755);
    for f in ["domesday.db-wal", "domesday.db-shm"] {
        std::fs::write(dir.path().join(f), b"").expect("wal");
        give(&dir.path().join(f));
    }
    chmod(dir.path(), 0o555);
    assert_refused("read-only directory with its WAL", &config, port, "not writable");
    chmod(dir.path(), 0o755);
}
