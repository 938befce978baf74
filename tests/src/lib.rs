//! Shared helpers of the end-to-end tests and the benchmark: fixture trees
//! (copied with their symlinks, advanced in place like a live sysfs), the
//! built binaries, free loopback ports and scraping, and a mock remote_write
//! receiver ([`mock_rw`]). No production logic here.

pub mod mock_rw;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Copies a tree, recreating symlinks as symlinks (never following them, so
/// sysfs-style cycles are harmless). The `t1` overlay is not copied.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if from.join(&name) == from.join("t1") && to.parent().is_some() && name == "t1" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// A private copy of fixture `name` in a temporary directory.
pub fn fixture_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join(name);
    copy_tree(&fixtures_dir().join(name), &root).expect("copy fixture");
    (dir, root)
}

/// Overwrites a file in place with one positional write, keeping its inode
/// (the agent keeps sysfs handles open, as it must on a real kernel). Shorter
/// content is padded with newlines, which every sysfs parser ignores.
pub fn write_in_place(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let old_len = std::fs::metadata(path)?.len() as usize;
    let mut buf = content.to_vec();
    if buf.len() < old_len {
        buf.resize(old_len, b'\n');
    }
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all_at(&buf, 0)
}

/// Applies the tree's `t1` overlay (the second sample, 5 s later) in place.
pub fn apply_overlay(fixture: &str, root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let overlay = fixtures_dir().join(fixture).join("t1");
    let mut changed = Vec::new();
    let mut stack = vec![overlay.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
                continue;
            }
            let rel = e.path().strip_prefix(&overlay).map(Path::to_path_buf).map_err(std::io::Error::other)?;
            let target = root.join(&rel);
            write_in_place(&target, &std::fs::read(e.path())?)?;
            changed.push(rel);
        }
    }
    Ok(changed)
}

/// Path of a workspace binary, built by `cargo build` (the test command builds
/// every binary before the tests run).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe.parent().and_then(Path::parent).map(Path::to_path_buf).expect("target dir");
    let p = profile_dir.join(name);
    assert!(p.exists(), "{} is not built: run `cargo build --workspace` first (./test.sh does)", p.display());
    p
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Starts `domesday-agent run` on a fixture root with a fast interval.
pub fn start_agent(root: &Path, port: u16, interval: &str, extra: &[&str]) -> Proc {
    let config = write_agent_config(root, "");
    let child =
        agent_command(root, &config, port, interval, extra).stderr(Stdio::piped()).spawn().expect("spawn agent");
    Proc(child)
}

/// Writes `<root>/agent.toml` (site `test-site`, host `test-host`, state in
/// `<root>/state`) followed by `tables` (e.g. `[labels]` and `[push]`).
pub fn write_agent_config(root: &Path, tables: &str) -> PathBuf {
    let state = root.join("state");
    let config = root.join("agent.toml");
    let mut f = std::fs::File::create(&config).expect("config");
    writeln!(
        f,
        "site = \"test-site\"\nhost = \"test-host\"\nstate_dir = {:?}\nmachine_id_file = {:?}\n{tables}",
        state.display().to_string(),
        root.join("etc/machine-id").display().to_string()
    )
    .expect("write config");
    config
}

/// Starts `domesday-agent run` like [`start_agent`] with extra config tables
/// and environment, its stderr (the log) going to `log` so a test can read it
/// while the agent runs.
pub fn start_agent_logged(
    root: &Path,
    port: u16,
    interval: &str,
    tables: &str,
    env: &[(&str, &str)],
    log: &Path,
) -> Proc {
    let config = write_agent_config(root, tables);
    let log = std::fs::File::create(log).expect("log file");
    let child = agent_command(root, &config, port, interval, &[])
        .envs(env.iter().copied())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn agent");
    Proc(child)
}

fn agent_command(root: &Path, config: &Path, port: u16, interval: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(binary("domesday-agent"));
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--sysfs-root")
        .arg(root.join("sys"))
        .arg("--procfs-root")
        .arg(root.join("proc"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--interval")
        .arg(interval)
        .args(extra)
        .env_remove("DOMESDAY_PUSH_TOKEN")
        .stdout(Stdio::null());
    cmd
}

/// GETs `url`, retrying until it answers or `within` passes.
pub fn get_text(url: &str, within: Duration) -> String {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let deadline = Instant::now() + within;
    loop {
        match client.get(url).send().and_then(|r| r.error_for_status()).and_then(|r| r.text()) {
            Ok(t) => return t,
            Err(e) if Instant::now() > deadline => panic!("GET {url}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Value of the series whose line starts with `name{` and contains every `needle`.
pub fn series_value(exposition: &str, name: &str, needles: &[&str]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `promtool`, which the test command installs; its absence fails the test.
pub fn promtool() -> PathBuf {
    for p in ["/usr/bin/promtool", "/usr/local/bin/promtool"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("promtool not found: install Debian's `prometheus` package (./test.sh does)");
}

/// Runs `promtool check metrics` on an exposition; returns its complaints.
pub fn promtool_check_metrics(exposition: &str) -> String {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().expect("stdin").write_all(exposition.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { String::new() } else { text }
}
