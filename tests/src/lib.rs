//! Shared helpers of the end-to-end tests and the benchmark: fixture trees
//! (copied with their symlinks, advanced in place like a live sysfs), the
//! built binaries, free loopback ports and scraping, and a mock remote_write
//! receiver ([`mock_rw`]), a throwaway PostgreSQL cluster ([`pg`]), and the choice of the ledger store every
//! collector a test starts runs on ([`store`]: SQLite, or PostgreSQL with `DOMESDAY_TEST_LEDGER=postgres`). No
//! production logic here.

pub mod mock_rw;
pub mod pg;
pub mod prom;
pub mod proxy;
pub mod rss;
pub mod store;

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
/// every binary before the tests run). `DOMESDAY_BIN_DIR` (e.g. `target/release`)
/// runs other builds of the binaries under the same tests, as the long soak does.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = match std::env::var_os("DOMESDAY_BIN_DIR") {
        Some(d) => workspace_root().join(d),
        None => exe.parent().and_then(Path::parent).map(Path::to_path_buf).expect("target dir"),
    };
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

/// Starts `domesday-agent run` on a fixture root with a fast interval, its output in `root/agent-<port>.log`
/// (checked for the agent's secrets when the [`Agent`] is dropped).
pub fn start_agent(root: &Path, port: u16, interval: &str, extra: &[&str]) -> Agent {
    let config = write_agent_config(root, "");
    spawn_agent(&mut agent_command(root, &config, port, interval, extra), &root.join(format!("agent-{port}.log")))
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

/// The `[push]` table of an agent on the fixture tree `root` pushing to `urls` (a TOML string or list) with
/// `token`, written to `root/push.token`, its spool in `root/spool`; `extra` are more `key = value` lines.
pub fn push_table(root: &Path, token: &str, urls: &str, extra: &str) -> String {
    std::fs::write(root.join("push.token"), token).expect("token");
    format!(
        "[push]\nurl = {urls}\ntoken_file = {:?}\nspool_dir = {:?}\n{extra}",
        root.join("push.token").display().to_string(),
        root.join("spool").display().to_string()
    )
}

/// Starts `domesday-agent run` like [`start_agent`] with extra config tables
/// and environment, its stdout and stderr (the log) going to `log` so a test
/// can read it while the agent runs (and [`Agent`] checks it for secrets).
pub fn start_agent_logged(
    root: &Path,
    port: u16,
    interval: &str,
    tables: &str,
    env: &[(&str, &str)],
    log: &Path,
) -> Agent {
    start_agent_logged_with(root, port, interval, tables, env, log, &[])
}

/// [`start_agent_logged`] with extra command-line arguments (`--site caen-1`).
pub fn start_agent_logged_with(
    root: &Path,
    port: u16,
    interval: &str,
    tables: &str,
    env: &[(&str, &str)],
    log: &Path,
    extra: &[&str],
) -> Agent {
    let config = write_agent_config(root, tables);
    spawn_agent(agent_command(root, &config, port, interval, extra).envs(env.iter().copied()), log)
}

/// An agent of site `caen-1` on `root` ticking every 100 ms with the `[push]` table `tables`, its log (push at
/// debug level) in `log`: the pushing agent of the forwarding and failover tests.
pub fn start_pushing_agent(root: &Path, port: u16, tables: &str, log: &Path) -> Agent {
    let env = [("DOMESDAY_LOG", "info,domesday_agent::push=debug")];
    start_agent_logged_with(root, port, "100ms", tables, &env, log, &["--site", "caen-1"])
}

/// [`start_agent_logged`] with `SIGXFSZ` ignored (see [`spawn_logged_ignoring_xfsz`]): the full-disk tests use it.
pub fn start_agent_logged_ignoring_xfsz(
    root: &Path,
    port: u16,
    interval: &str,
    tables: &str,
    env: &[(&str, &str)],
    log: &Path,
) -> Agent {
    let config = write_agent_config(root, tables);
    let mut agent = agent_command(root, &config, port, interval, &[]);
    agent.envs(env.iter().copied());
    let (proc, secrets) = spawn_logged_ignoring_xfsz(&agent, log, Secrets::of(&agent));
    Agent { proc, log: log.to_path_buf(), secrets }
}

/// Spawns `cmd` with its stdout and stderr in `log`; the returned guard checks, when dropped, that the log holds
/// none of `secrets` (drop it after the process, as [`Agent`] and [`Collector`] do).
pub fn spawn_logged(cmd: &mut Command, log: &Path, secrets: Secrets) -> (Proc, NoSecretsInOutput) {
    let file = std::fs::File::create(log).expect("log file");
    let child = cmd
        .stdout(Stdio::from(file.try_clone().expect("log file")))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", command_line(cmd)));
    (Proc(child), NoSecretsInOutput::new(secrets, log, None))
}

/// [`spawn_logged`] with `SIGXFSZ` ignored (`trap '' XFSZ`, inherited through `exec`): once its file size limit
/// is lowered ([`limit_file_size`]), each write past it fails with `EFBIG`, as writes on a full disk fail with
/// `ENOSPC`, instead of the signal killing the process. Its stdout and stderr go through one pipe, copied to
/// `log` by this process: the process's own file size limit must not cut its log.
pub fn spawn_logged_ignoring_xfsz(cmd: &Command, log: &Path, secrets: Secrets) -> (Proc, NoSecretsInOutput) {
    let mut file = std::fs::File::create(log).expect("log file");
    let mut wrapper = Command::new("bash");
    wrapper.arg("-c").arg("trap '' XFSZ; exec \"$0\" \"$@\" 2>&1").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapper.env(k, v),
            None => wrapper.env_remove(k),
        };
    }
    let mut child = wrapper
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", command_line(cmd)));
    let copier = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut out, &mut file);
        })
    });
    (Proc(child), NoSecretsInOutput::new(secrets, log, copier))
}

/// Lowers (`Some(bytes)`) or lifts (`None`) the soft `RLIMIT_FSIZE` of the running process `pid` with util-linux
/// `prlimit`, unprivileged (the hard limit stays): the tests' full disk.
pub fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let limit = bytes.map_or("unlimited".to_string(), |b| b.to_string());
    let out = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--fsize={limit}:"))
        .output()
        .expect("prlimit (util-linux)");
    assert!(out.status.success(), "prlimit --fsize={limit}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `domesday-agent probe` on the fixture `root` with `config`, host `p`; the
/// caller adds environment, runs it and reads stdout with [`probe_output`].
pub fn probe_command(root: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(binary("domesday-agent"));
    cmd.args(["probe", "--interval", "100ms", "--host", "p", "--config"])
        .arg(config)
        .arg("--sysfs-root")
        .arg(root.join("sys"))
        .arg("--procfs-root")
        .arg(root.join("proc"));
    cmd
}

/// Runs a probe command, checks its whole output for the agent's secrets ([`agent_output`]), asserts it
/// succeeded and returns its report.
pub fn probe_output(cmd: &mut Command) -> String {
    let out = agent_output(cmd);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `domesday-agent run` on the fixture tree `root` with `config`, listening on `port`: what every agent a test
/// starts runs (the token only from the config's file); [`spawn_agent`] starts it with its output checked.
pub fn agent_command(root: &Path, config: &Path, port: u16, interval: &str, extra: &[&str]) -> Command {
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
        .env_remove("DOMESDAY_PUSH_TOKEN");
    cmd
}

/// A running agent a test started through these helpers: its process (killed when dropped, see [`Proc`]), the
/// file holding its stdout and stderr, and the check of that output for the agent's secrets, run after the
/// process is gone (fields drop in order). `agent.0`, `agent.terminate(…)` reach the [`Proc`].
pub struct Agent {
    pub proc: Proc,
    pub log: PathBuf,
    pub secrets: NoSecretsInOutput,
}

impl std::ops::Deref for Agent {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

impl Agent {
    /// Adds a secret the agent's files do not hold (a basic-auth password in clear, whose bcrypt hash the web
    /// configuration holds): its output must not show it either.
    pub fn also_secret(&mut self, kind: &str, value: &str) {
        self.secrets.secrets.fixed.push((kind.to_string(), value.to_string()));
    }
}

/// Spawns an agent command (from [`agent_command`] or the test's own) with its stdout and stderr in `log`; the
/// returned [`Agent`] checks, when dropped, that the log holds none of the agent's secrets ([`Secrets`]).
pub fn spawn_agent(cmd: &mut Command, log: &Path) -> Agent {
    let (proc, secrets) = spawn_logged(cmd, log, Secrets::of(cmd));
    Agent { proc, log: log.to_path_buf(), secrets }
}

/// Runs an agent command to its end (`check-config`, `probe`, `once`, `simulate`) and checks its stdout and
/// stderr for the agent's secrets ([`Secrets`]) before returning them.
pub fn agent_output(cmd: &mut Command) -> std::process::Output {
    checked_output(cmd, Secrets::of(cmd))
}

/// Runs a one-shot collector command (`check-config`, `energy`, `report`, `import-meters`, `correct`,
/// `retire-host`, `backup`, …) to its end and checks its stdout and stderr for the secrets of its command line
/// ([`Secrets::of`]) and of `dir`, the directory of its ledger and token files ([`Secrets::beside`]), before
/// returning them. On PostgreSQL ([`store`]) the command runs on its ledger's database instead.
pub fn collector_output(cmd: &mut Command, dir: &Path) -> std::process::Output {
    let mut on_store = store::command_for_store(cmd);
    let cmd = on_store.as_mut().unwrap_or(cmd);
    checked_output(cmd, Secrets::of(cmd).beside(dir))
}

/// Runs `cmd` to its end and checks its stdout and stderr for `secrets`.
pub fn checked_output(cmd: &mut Command, secrets: Secrets) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {}: {e}", command_line(cmd)));
    secrets.check_output(&command_line(cmd), &out);
    out
}

/// A command's program and arguments, without its environment (which may hold a token), for messages.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// Waits for an agent the test spawned with piped stdout and stderr (`simulate`, whose secrets `secrets` were
/// taken from its command before the spawn) and checks both for them.
pub fn agent_wait(child: Child, secrets: &Secrets, name: &str) -> std::process::Output {
    let out = child.wait_with_output().expect("agent output");
    secrets.check_output(name, &out);
    out
}

/// Where a process's secrets are, read from its command line (an agent's or a collector's): the files named by
/// `--config` (its keys ending in `token_file`, `password_file` or `key_file`: push and site tokens, BMC, meter
/// and PostgreSQL passwords, TLS keys; its `web_config_file`), `--token-file` and `--web-config-file` (its
/// `key_file` and the bcrypt hashes of `basic_auth_users`), every `*.token`, `*.key`, `*.pass`, `*.password` or
/// `*.secret` file beside its configuration, and the values of its environment variables named like a token, a
/// password or a secret (`DOMESDAY_PUSH_TOKEN`, `PGPASSWORD`); [`Secrets::beside`] adds a directory whose
/// configurations (`*.toml`) and secret files count too. The files and directories are read each time the
/// secrets are asked for, so a token rotated during the test, or one a command writes itself (the demo's), is
/// searched for too.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    /// Configuration files (TOML) naming secret files, read when the secrets are asked for.
    pub configs: Vec<PathBuf>,
    /// Directories whose `*.toml` configurations and secret files count.
    pub dirs: Vec<PathBuf>,
    /// (what it is, the file).
    pub files: Vec<(String, PathBuf)>,
    /// Web configuration files (their key files and bcrypt hashes are secrets).
    pub web_configs: Vec<PathBuf>,
    /// (what it is, the value).
    pub fixed: Vec<(String, String)>,
}

/// Endings of the configuration keys naming a file whose content is secret.
const SECRET_FILE_KEYS: [&str; 3] = ["token_file", "password_file", "key_file"];
/// Extensions of the files beside a configuration taken as secrets.
const SECRET_EXTENSIONS: [&str; 5] = ["token", "key", "pass", "password", "secret"];

impl Secrets {
    /// The secrets of the process `cmd` runs.
    pub fn of(cmd: &Command) -> Secrets {
        let mut s = Secrets::default();
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        for (i, a) in args.iter().enumerate() {
            let (flag, value) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (a.as_str(), args.get(i + 1).cloned()),
            };
            let Some(value) = value else { continue };
            match flag {
                "--config" => s.configs.push(value.into()),
                "--token-file" => s.files.push(("push token (--token-file)".into(), value.into())),
                "--web-config-file" => s.web_configs.push(value.into()),
                _ => {}
            }
        }
        for (k, v) in cmd.get_envs() {
            let (k, Some(v)) = (k.to_string_lossy(), v) else { continue };
            if ["TOKEN", "PASSWORD", "SECRET"].iter().any(|w| k.to_ascii_uppercase().contains(w)) {
                s.fixed.push((format!("environment variable {k}"), v.to_string_lossy().trim().to_string()));
            }
        }
        s
    }

    /// These secrets and those of `dir`: its configurations (`*.toml`) and secret files, read when asked for.
    pub fn beside(mut self, dir: &Path) -> Secrets {
        self.dirs.push(dir.to_path_buf());
        self
    }

    /// The configurations and secret files now in `dir`.
    fn scan_dir(dir: &Path, configs: &mut Vec<PathBuf>, files: &mut Vec<(String, PathBuf)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") {
                configs.push(p);
            } else if p.extension().is_some_and(|x| SECRET_EXTENSIONS.iter().any(|s| x == *s)) {
                files.push((format!("secret file in {}", dir.display()), p));
            }
        }
    }

    /// The secret files and web configurations `config` names, and the secret files beside it.
    fn read_config(config: &Path, files: &mut Vec<(String, PathBuf)>, web_configs: &mut Vec<PathBuf>) {
        let text = std::fs::read_to_string(config).unwrap_or_default();
        let dir = config.parent().unwrap_or(Path::new("."));
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else { continue };
            let (key, value) = (key.trim(), value.trim().trim_matches(|c| c == '"' || c == '\''));
            if SECRET_FILE_KEYS.iter().any(|k| key.ends_with(k)) {
                files.push((format!("{key} of {}", config.display()), dir.join(value)));
            } else if key == "web_config_file" {
                web_configs.push(dir.join(value));
            }
        }
        Self::scan_dir(dir, &mut Vec::new(), files);
    }

    /// Every secret now, as (what it is, value): a file's trimmed content, or each base64 line of a PEM private
    /// key. Values shorter than 6 characters would match by chance and are left out.
    pub fn values(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self.fixed.clone();
        let (mut files, mut web_configs, mut configs) =
            (self.files.clone(), self.web_configs.clone(), self.configs.clone());
        for dir in &self.dirs {
            Self::scan_dir(dir, &mut configs, &mut files);
        }
        for config in &configs {
            Self::read_config(config, &mut files, &mut web_configs);
        }
        for web in &web_configs {
            let text = std::fs::read_to_string(web).unwrap_or_default();
            let dir = web.parent().unwrap_or(Path::new("."));
            let mut in_users = false;
            for line in text.lines() {
                let indented = line.starts_with(' ') || line.starts_with('\t');
                if !indented {
                    in_users = line.trim_end() == "basic_auth_users:";
                    continue;
                }
                let Some((k, v)) = line.trim().split_once(':') else { continue };
                let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                if in_users {
                    out.push((format!("bcrypt hash of basic-auth user {k} in {}", web.display()), v.to_string()));
                } else if k == "key_file" {
                    files.push((format!("key_file of {}", web.display()), dir.join(v)));
                }
            }
        }
        for (kind, file) in files {
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            if text.contains("-----BEGIN") {
                for l in text.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16) {
                    out.push((format!("private key line of {} ({kind})", file.display()), l.to_string()));
                }
            } else {
                out.push((format!("{} ({kind})", file.display()), text.trim().to_string()));
            }
        }
        out.retain(|(_, v)| v.len() >= 6);
        out.sort();
        out.dedup();
        out
    }

    /// Fails when any secret appears in `text`, the output of `name` (see [`fail_on_secret`]).
    pub fn check(&self, name: &str, text: &str) {
        let values = self.values();
        let all: Vec<&str> = values.iter().map(|(_, v)| v.as_str()).collect();
        for (kind, value) in &values {
            fail_on_secret(kind, value, name, text, &all);
        }
    }

    /// [`Secrets::check`] on a finished process's stdout and stderr.
    pub fn check_output(&self, name: &str, out: &std::process::Output) {
        self.check(&format!("{name} (stdout)"), &String::from_utf8_lossy(&out.stdout));
        self.check(&format!("{name} (stderr)"), &String::from_utf8_lossy(&out.stderr));
    }
}

/// Panics when `secret` appears in `text` (the output of `name`), with what the secret is (`kind`), its first two
/// characters and length, and the lines holding it with every one of `all` masked: never the secret itself.
pub fn fail_on_secret(kind: &str, secret: &str, name: &str, text: &str, all: &[&str]) {
    if !text.contains(secret) {
        return;
    }
    let mask = |l: &str| all.iter().chain([&secret]).fold(l.to_string(), |l, s| l.replace(s, "<SECRET>"));
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(secret))
        .map(|(i, l)| format!("{}: {}", i + 1, mask(l)))
        .collect();
    panic!(
        "{kind} ({}) appears in the output of {name}, on these lines:\n{}",
        describe_secret(secret),
        lines.join("\n")
    );
}

/// A secret described without showing it: its first two characters and its length.
pub fn describe_secret(secret: &str) -> String {
    let head: String = secret.chars().take(2).collect();
    format!("{head}…, {} bytes", secret.len())
}

/// Checks, when dropped, that a process's output (the file `log`) holds none of its secrets; the process must be
/// gone by then ([`Agent`] and [`Collector`] drop their [`Proc`] first) and the thread copying its output (if any) done. The
/// secrets are read at the start and again at the end, so a token rotated during the test counts both ways.
pub struct NoSecretsInOutput {
    pub secrets: Secrets,
    pub log: PathBuf,
    at_start: Vec<(String, String)>,
    copier: Option<std::thread::JoinHandle<()>>,
}

impl NoSecretsInOutput {
    pub fn new(secrets: Secrets, log: &Path, copier: Option<std::thread::JoinHandle<()>>) -> NoSecretsInOutput {
        let at_start = secrets.values();
        NoSecretsInOutput { secrets, log: log.to_path_buf(), at_start, copier }
    }
}

impl Drop for NoSecretsInOutput {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test already failed: a second panic would abort and hide its message, and the copier (if any)
            // may wait for a grandchild still holding the pipe.
            return;
        }
        if let Some(c) = self.copier.take() {
            let _ = c.join();
        }
        let text = read_log(&self.log);
        let mut values = self.secrets.values();
        values.extend(self.at_start.iter().cloned());
        let all: Vec<&str> = values.iter().map(|(_, v)| v.as_str()).collect();
        let name = format!("the process logging to {}", self.log.display());
        for (kind, value) in &values {
            fail_on_secret(kind, value, &name, &text, &all);
        }
    }
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

/// A collector started on a scratch directory with one site `caen-1` whose
/// write token is `token` (and a second site `rouen-1` with `other-token`).
pub struct Collector {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
    /// Dropped after `proc` (fields drop in order): the collector's whole output is then read.
    pub secrets: NoSecretsInOutput,
}

/// The file the test helpers send a collector's output (stdout and stderr) to, in its directory.
pub const COLLECTOR_LOG: &str = "collector.log";

/// The collector's config for the end-to-end tests.
pub fn collector_config(dir: &Path, port: u16, token: &str, extra: &str) -> PathBuf {
    std::fs::write(dir.join("caen.token"), format!("{token}\n")).expect("token");
    std::fs::write(dir.join("rouen.token"), "other-token\n").expect("token");
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndb = {:?}\n{extra}\n\n[[sites]]\nid = \"caen-1\"\nname = \"Caen 1\"\nregion = \"normandie\"\ntimezone = \"Europe/Paris\"\ntoken_file = {:?}\n\n[[sites]]\nid = \"rouen-1\"\ntimezone = \"Europe/Paris\"\ntoken_file = {:?}\n",
            dir.join("domesday.db").display().to_string(),
            dir.join("caen.token").display().to_string(),
            dir.join("rouen.token").display().to_string()
        ),
    )
    .expect("config");
    config
}

impl Collector {
    /// Starts `domesday-collector serve` and waits until it is ready.
    pub fn start(dir: &Path, port: u16, token: &str) -> Collector {
        Self::start_with(dir, port, token, "")
    }

    /// The same, with extra top-level TOML (before the sites), e.g. `[[pull]]` tables.
    pub fn start_with(dir: &Path, port: u16, token: &str, extra: &str) -> Collector {
        let config = collector_config(dir, port, token, extra);
        Self::spawn(dir, port, &config)
    }

    /// Starts `serve` with a given config file (which must listen on `port`).
    pub fn spawn(dir: &Path, port: u16, config: &Path) -> Collector {
        Self::spawn_command(
            Command::new(binary("domesday-collector")).arg("serve").arg("--config").arg(config),
            port,
            dir,
        )
    }

    /// Starts a collector command the test built (`serve` with its own arguments and environment) and waits until
    /// it is ready. Its stdout and stderr go to `dir/collector.log`, checked when the collector is dropped for
    /// the secrets of its command line and of `dir` ([`Secrets::of`], [`Secrets::beside`]).
    /// On PostgreSQL ([`store`]) the command runs on its ledger's database instead.
    pub fn spawn_command(cmd: &mut Command, port: u16, dir: &Path) -> Collector {
        let mut on_store = store::command_for_store(cmd);
        let cmd = on_store.as_mut().unwrap_or(cmd);
        let secrets = Secrets::of(cmd).beside(dir);
        let (proc, secrets) = spawn_logged(cmd, &dir.join(COLLECTOR_LOG), secrets);
        Self::ready(proc, secrets, port, dir)
    }

    /// [`Collector::spawn_command`] with `SIGXFSZ` ignored, for the full-disk tests ([`spawn_logged_ignoring_xfsz`]).
    pub fn spawn_ignoring_xfsz(cmd: &Command, port: u16, dir: &Path) -> Collector {
        let on_store = store::command_for_store(cmd);
        let cmd = on_store.as_ref().unwrap_or(cmd);
        let secrets = Secrets::of(cmd).beside(dir);
        let (proc, secrets) = spawn_logged_ignoring_xfsz(cmd, &dir.join(COLLECTOR_LOG), secrets);
        Self::ready(proc, secrets, port, dir)
    }

    fn ready(proc: Proc, secrets: NoSecretsInOutput, port: u16, dir: &Path) -> Collector {
        let c = Collector { proc, port, dir: dir.to_path_buf(), secrets };
        get_text(&c.url("/readyz"), Duration::from_secs(20));
        c
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Uploads meter readings (`POST /api/v1/sites/{site}/meter-readings`, a CSV) with the site's write token;
    /// the upload must be accepted (200).
    pub fn upload_readings(&self, site: &str, token: &str, csv: String) {
        let resp = reqwest::blocking::Client::new()
            .post(self.url(&format!("/api/v1/sites/{site}/meter-readings")))
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .expect("upload meter readings");
        assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap_or_default());
    }
}

/// POSTs a remote_write body; returns the status code and the body text.
pub fn post_write(url: &str, token: Option<&str>, body: Vec<u8>) -> Result<(u16, String), String> {
    let client =
        reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let mut req = client
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    Ok((code, resp.text().unwrap_or_default()))
}

/// A `domesday_host_energy_joules_total` series as an agent pushes it.
pub fn host_energy_series(
    site: &str,
    host: &str,
    method: &str,
    samples: &[(f64, i64)],
) -> domesday_model::remote_write::TimeSeries {
    use domesday_model::remote_write::{Label, Sample, TimeSeries};
    let quality = if matches!(method, "model" | "rapl_uplift") { "estimated" } else { "measured" };
    let mut labels: Vec<Label> = [
        ("__name__", "domesday_host_energy_joules_total"),
        ("host", host),
        ("job", "domesday-agent"),
        ("method", method),
        ("quality", quality),
        ("site", site),
    ]
    .iter()
    .map(|(n, v)| Label { name: (*n).into(), value: (*v).into() })
    .collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    TimeSeries { labels, samples: samples.iter().map(|(v, t)| Sample { value: *v, timestamp: *t }).collect() }
}

/// A minimal HTTP/1.1 server on 127.0.0.1 for mock upstreams (grid APIs, BMCs):
/// each request's path and query go to `handler`, whose `(status, body)` is
/// answered as JSON with `Connection: close`. It stops with the test process.
pub fn mock_http(handler: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> u16 {
    mock_http_headers(move |target, _| handler(target))
}

/// [`mock_http`] whose handler also sees the request headers (names lower-cased).
pub fn mock_http_headers(handler: impl Fn(&str, &[(String, String)]) -> (u16, String) + Send + Sync + 'static) -> u16 {
    mock_http_full(move |r| {
        let (status, body) = handler(&r.target, &r.headers);
        MockResponse { status, headers: Vec::new(), body }
    })
}

/// One request seen by [`mock_http_full`].
#[derive(Debug, Clone)]
pub struct MockRequest {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl MockRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The answer of a [`mock_http_full`] handler (a JSON body).
#[derive(Debug, Clone)]
pub struct MockResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// [`mock_http`] whose handler sees the method, headers and body, and answers
/// headers too (a Redfish BMC's sessions).
pub fn mock_http_full(handler: impl Fn(&MockRequest) -> MockResponse + Send + Sync + 'static) -> u16 {
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
    let port = listener.local_addr().map(|a| a.port()).expect("port");
    let handler = std::sync::Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handler = handler.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("GET").to_string();
                let target = parts.next().unwrap_or("/").to_string();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
                let len = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    .min(1 << 20);
                let mut body = Vec::new();
                let _ = reader.by_ref().take(len).read_to_end(&mut body);
                let req = MockRequest { method, target, headers, body: String::from_utf8_lossy(&body).into_owned() };
                let resp = handler(&req);
                let extra: String = resp.headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
                let mut w = &stream;
                let _ = write!(
                    w,
                    "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{}",
                    resp.status,
                    resp.body.len(),
                    resp.body
                );
            });
        }
    });
    port
}

/// Decodes `%XX` escapes and `+` in a query string component.
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(timestamp ms, joules)` of every tick an agent queued for push, for one host
/// power `method`, read from its debug log (`domesday_agent::push=debug`).
pub fn pushed_host_energy(log: &str, method: &str) -> Vec<(i64, f64)> {
    let prefix = format!("{method}=");
    log.lines()
        .filter(|l| l.contains("push tick"))
        .filter_map(|l| {
            let field = |name: &str| l.split_whitespace().find_map(|w| w.strip_prefix(name)).map(str::to_string);
            let ts = field("ts=")?.parse::<i64>().ok()?;
            let energy = field("host_energy=")?;
            let v = energy.split(',').find_map(|m| m.strip_prefix(prefix.as_str()))?.parse::<f64>().ok()?;
            Some((ts, v))
        })
        .collect()
}

/// Writes `collector.toml` in `dir` for one site, `caen-1` (Europe/Paris), whose
/// write token `token` is in `dir/t`; the ledger is `dir/domesday.db`. `site`
/// is appended inside the site's table: more site keys first, then its
/// `[[sites.meters]]` and other sub-tables.
pub fn site_config(dir: &Path, port: u16, token: &str, site: &str) -> PathBuf {
    std::fs::write(dir.join("t"), token).expect("token");
    let p = dir.join("collector.toml");
    std::fs::write(
        &p,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndb = {:?}\n\n[[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\ntoken_file = {:?}\n{site}",
            dir.join("domesday.db").display().to_string(),
            dir.join("t").display().to_string()
        ),
    )
    .expect("config");
    p
}

/// `domesday-collector serve --config cfg` in `dir` with `SOURCE_DATE_EPOCH`
/// set to `epoch`, as the report commands run, so both produce the same
/// bytes; returns once `/readyz` answers.
pub fn serve_at_epoch(dir: &Path, port: u16, cfg: &Path, epoch: &str) -> Collector {
    Collector::spawn_command(
        Command::new(binary("domesday-collector"))
            .arg("serve")
            .arg("--config")
            .arg(cfg)
            .current_dir(dir)
            .env("SOURCE_DATE_EPOCH", epoch),
        port,
        dir,
    )
}

/// Compares a rendering with `tests/golden/reports/<name>`; `UPDATE_GOLDEN=1`
/// rewrites the file first.
pub fn report_golden(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden").join("reports").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, got).expect("write golden");
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(got, want, "{} differs from the rendering (UPDATE_GOLDEN=1 rewrites it)", path.display());
}

/// Equal within a relative 1e-9 (absolute below 1).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// A CSV line into cells (quoted cells may hold commas and doubled quotes).
pub fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    out.push(cur);
    out
}

/// Now, down to the minute, in Unix milliseconds.
pub fn now_minute_ms() -> i64 {
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    ms.div_euclid(60_000) * 60_000
}

/// `GET /api/v1/energy` of `host` of site `caen-1` over `[from, to)` (ms), as JSON.
pub fn host_energy(c: &Collector, host: &str, from: i64, to: i64) -> serde_json::Value {
    let body = get_text(
        &c.url(&format!("/api/v1/energy?site=caen-1&host={host}&from={from}&to={to}")),
        Duration::from_secs(5),
    );
    serde_json::from_str(&body).expect("energy json")
}

/// The `[[sites.meters]]` tables of a site metered for the reports: utility,
/// UPS output, on-site renewable, reused heat, water and potable water.
pub fn report_meters() -> String {
    [
        ("edf", "utility_in", "kWh"),
        ("ups", "ups_out", "kWh"),
        ("pv", "onsite_renewable_consumed", "kWh"),
        ("chaleur", "heat_reused_out", "kWh"),
        ("eau", "water_in", "m3"),
        ("eau-pot", "water_potable_in", "m3"),
    ]
    .iter()
    .map(|(id, role, unit)| {
        format!("\n[[sites.meters]]\nid = \"{id}\"\nrole = \"{role}\"\nkind = \"csv\"\nunit = \"{unit}\"\n")
    })
    .collect()
}

/// A site's declaration keys (Annex I identity, redundancy, the French keys)
/// and its `[[sites.annual]]` figures for `year`: with them `report eed` finds
/// no mandatory field missing. TOML lines of a `[[sites]]` table, to be
/// followed only by sub-tables (`[[sites.meters]]`).
pub fn declaration_keys(year: i64) -> String {
    format!(
        r#"country = "FR"
lau_code = "14118"
nuts3_code = "FRD11"
dc_type = "colocation"
dc_structure = "structure"
offers_other_type_services = false
entry_into_operation = "2019-06"
installed_it_power_kw = 640.0
total_floor_area_m2 = 1200.0
computer_room_floor_area_m2 = 450.0
intake_air_set_point_c = 24.0
siret = ["73282932000074"]
contact_name = "A. Martin"
contact_email = "energie@ndc.example"
commissioning_date = "2019-06-15"
public_disclosure_url = "https://ndc.example/eed"
owner = "Caen la Mer"
owner_contact = "patrimoine@caen.example"
operator_contact = "noc@ndc.example"

[sites.redundancy]
electrical_hv = "2N"
electrical_lv = "2N"
electrical_rack = "2N"
cooling_room = "N+1"
cooling_rack = "N"

[[sites.annual]]
year = {year}
grid_functions = []
cbtg_kw = 0.0
twh_c = 32.5
refrigerant_types = ["R-134a"]
cdd_degree_days = 118.4
cdd_source = "Copernicus C3S ERA5"
eres_goo_kwh = 600000.0
eres_ppa_kwh = 24000.0
cserv_sert = 41250.0
cserv_floor_coverage_pct = 80.0
cstor_pb = 3.2
cstor_floor_coverage_pct = 80.0
"#
    )
}

/// Certificates generated at test time (rcgen), as PEM files in `dir`: a CA
/// (`ca.crt`), a server certificate for `127.0.0.1` and `localhost` signed by
/// it (`server.crt`, `server.key`), a client certificate signed by it
/// (`client.crt`, `client.key`), and a second, unrelated CA (`other-ca.crt`)
/// with its own server certificate (`other-server.crt`, `other-server.key`).
pub struct TestPki {
    pub dir: PathBuf,
}

impl TestPki {
    pub fn new(dir: &Path) -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir).expect("pki dir");
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).expect("write pem");
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("ca")
        };
        let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>, cn: &str, server: bool, stem: &str| {
            let sans = if server { vec!["127.0.0.1".to_string(), "localhost".into()] } else { vec![] };
            let mut p = CertificateParams::new(sans).expect("params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages =
                vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
            let key = KeyPair::generate().expect("key");
            let cert = p.signed_by(&key, issuer).expect("sign");
            write(&format!("{stem}.crt"), cert.pem());
            write(&format!("{stem}.key"), key.serialize_pem());
        };
        let main = ca("domesday test CA");
        write("ca.crt", main.pem());
        leaf(&main, "collector", true, "server");
        leaf(&main, "agent test-host", false, "client");
        let other = ca("unrelated test CA");
        write("other-ca.crt", other.pem());
        leaf(&other, "collector (other CA)", true, "other-server");
        TestPki { dir: dir.to_path_buf() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The base64 lines of every private key here: none may ever be printed.
    pub fn key_lines(&self) -> Vec<String> {
        ["server.key", "client.key", "other-server.key"]
            .iter()
            .flat_map(|k| {
                std::fs::read_to_string(self.path(k))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// A blocking HTTP client that trusts only the CA in `ca` (a PEM file) and,
/// with `identity`, presents that client certificate and key.
pub fn tls_client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::blocking::Client {
    let pem = std::fs::read(ca).expect("ca");
    let mut b = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("ca pem"));
    if let Some((cert, key)) = identity {
        let mut id = std::fs::read(cert).expect("cert");
        id.extend(std::fs::read(key).expect("key"));
        b = b.identity(reqwest::Identity::from_pem(&id).expect("identity"));
    }
    b.build().expect("client")
}

/// Fails when any of `secrets` (tokens, passwords, key material a test used)
/// appears in any of `outputs`: (name, captured stdout or stderr) of every
/// process the test ran. A secret shorter than 6 characters would match by
/// chance and is refused.
pub fn assert_no_secrets(outputs: &[(&str, &str)], secrets: &[&str]) {
    for s in secrets {
        assert!(s.len() >= 6, "a secret ({}) is too short to be searched for", describe_secret(s));
        for (name, text) in outputs {
            fail_on_secret("a secret", s, name, text, secrets);
        }
    }
}

/// The text of a log file a test's process wrote (empty when absent).
pub fn read_log(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Waits (bounded) until `path`'s text contains `needle`; returns the text.
pub fn wait_for_log(path: &Path, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let t = read_log(path);
        if t.contains(needle) {
            return t;
        }
        assert!(Instant::now() < deadline, "{needle:?} not in {} within {within:?}:\n{t}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod no_secrets_tests {
    use super::*;

    /// A collector's directory as the tests leave it: a site token, and a configuration naming a PostgreSQL
    /// password file whose name says nothing of a secret.
    fn collector_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        std::fs::write(d.join("caen.token"), "s3cret-token-value\n").expect("token");
        std::fs::write(d.join("pg-credentials"), "pg-pass-0bc2e1\n").expect("password");
        std::fs::write(
            d.join("collector.toml"),
            "db = \"postgres://domesday@127.0.0.1/d\"\ndb_password_file = \"pg-credentials\"\n",
        )
        .expect("config");
        dir
    }

    /// What the check of a collector's log says when it holds `leak`, or None when it passes.
    fn collector_check_with_log(leak: &str) -> Option<String> {
        let dir = collector_dir();
        let log = dir.path().join(COLLECTOR_LOG);
        std::fs::write(&log, format!("INFO serving\nWARN {leak}\n")).expect("log");
        let guard = NoSecretsInOutput::new(Secrets::default().beside(dir.path()), &log, None);
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard))).err()?;
        Some(failed.downcast_ref::<String>().cloned().unwrap_or_default())
    }

    #[test]
    fn a_token_or_password_in_the_collector_log_fails_the_test_and_a_clean_log_passes() {
        assert_eq!(collector_check_with_log("bad token for site caen-1"), None);
        for (leak, kind) in [("s3cret-token-value", "caen.token"), ("pg-pass-0bc2e1", "db_password_file of")] {
            let msg = collector_check_with_log(leak).unwrap_or_else(|| panic!("{kind} not caught"));
            assert!(msg.contains(kind) && msg.contains("2: WARN <SECRET>"), "{msg}");
        }
    }

    #[test]
    #[should_panic(expected = "db_password_file of")]
    fn a_password_in_the_output_of_a_one_shot_collector_command_fails_the_test() {
        let dir = collector_dir();
        // Stands for a collector command printing the password file it was given.
        collector_output(Command::new("cat").arg(dir.path().join("pg-credentials")), dir.path());
    }

    #[test]
    fn the_stderr_of_a_process_spawned_ignoring_xfsz_is_checked_with_its_environment() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("out.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo starting; echo \"bad password $PGPASSWORD\" >&2"]).env("PGPASSWORD", "env-pw-9f0e1d");
        let (mut proc, guard) = spawn_logged_ignoring_xfsz(&cmd, &log, Secrets::of(&cmd));
        assert!(proc.0.wait().expect("wait").success());
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard))).expect_err("a leak");
        let msg = failed.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("environment variable PGPASSWORD") && msg.contains("2: bad password <SECRET>"), "{msg}");
    }

    /// An agent's directory as the helpers leave it: its config naming a token file and a client key, the
    /// web configuration with a key and a bcrypt hash.
    fn agent_dir() -> (tempfile::TempDir, Command) {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        std::fs::write(d.join("push.token"), "push-token-5e1f9a\n").expect("token");
        std::fs::create_dir_all(d.join("pki")).expect("pki");
        std::fs::write(
            d.join("pki/client.key"),
            "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----\n",
        )
        .expect("key");
        std::fs::write(
            d.join("pki/server.key"),
            "-----BEGIN PRIVATE KEY-----\nAwEHBG0wawIBAQQgServerKeyLine\n-----END PRIVATE KEY-----\n",
        )
        .expect("key");
        std::fs::write(
            d.join("pki/web.yml"),
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: $2b$10$abcdefghijklmnopqrstuv\n",
        )
        .expect("web");
        let config = d.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "site = \"s\"\n[push]\ntoken_file = {:?}\nkey_file = {:?}\n",
                d.join("push.token").display().to_string(),
                d.join("pki/client.key").display().to_string()
            ),
        )
        .expect("config");
        let mut cmd = Command::new("domesday-agent");
        cmd.arg("run").arg("--config").arg(&config).arg("--web-config-file").arg(d.join("pki/web.yml"));
        cmd.env("DOMESDAY_PUSH_TOKEN", "env-token-77aa01");
        (dir, cmd)
    }

    /// What the check says when `leak` is in the agent's log, or None when it passes.
    fn agent_check_with_log(leak: &str) -> Option<String> {
        let (dir, cmd) = agent_dir();
        let log = dir.path().join("agent.log");
        std::fs::write(&log, format!("INFO starting\nWARN push failed: {leak}\n")).expect("log");
        let guard = NoSecretsInOutput::new(Secrets::of(&cmd), &log, None);
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard))).err()?;
        Some(failed.downcast_ref::<String>().cloned().unwrap_or_default())
    }

    #[test]
    fn every_secret_an_agent_holds_in_its_output_fails_the_test_without_showing_it() {
        assert_eq!(agent_check_with_log("connection refused (token_file /etc/push.token)"), None);
        for (leak, kind) in [
            ("push-token-5e1f9a", "push.token"),
            ("env-token-77aa01", "environment variable DOMESDAY_PUSH_TOKEN"),
            ("MIGHAgEAMBMGByqGSM49AgEGCCqGSM49", "private key line of"),
            ("AwEHBG0wawIBAQQgServerKeyLine", "server.key"),
            ("$2b$10$abcdefghijklmnopqrstuv", "bcrypt hash of basic-auth user prometheus"),
        ] {
            let msg = agent_check_with_log(&format!("Bearer {leak}")).unwrap_or_else(|| panic!("{kind} not caught"));
            assert!(msg.contains(kind) && msg.contains("agent.log") && msg.contains("2: WARN"), "{msg}");
            assert!(msg.contains(&format!("{} bytes", leak.len())) && msg.contains("<SECRET>"), "{msg}");
            assert!(!msg.contains(leak), "the failure shows the secret: {msg}");
        }
    }

    #[test]
    #[should_panic(expected = "appears in the output of")]
    fn a_token_in_a_probe_or_check_config_output_fails_the_test() {
        let (_dir, cmd) = agent_dir();
        let out = std::process::Output {
            status: std::process::ExitStatus::default(),
            stdout: b"# token: push-token-5e1f9a\n".to_vec(),
            stderr: Vec::new(),
        };
        Secrets::of(&cmd).check_output("agent check-config", &out);
    }

    #[test]
    fn a_leak_message_masks_the_secret() {
        let r =
            std::panic::catch_unwind(|| assert_no_secrets(&[("x", "a\nthe s3cret-value here\n")], &["s3cret-value"]));
        let msg = r.expect_err("a leak fails").downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("2: the <SECRET> here") && msg.contains("s3…, 12 bytes"), "{msg}");
        assert!(!msg.contains("s3cret-value"), "{msg}");
    }
}
