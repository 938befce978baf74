//! A throwaway PostgreSQL cluster for the tests of the PostgreSQL ledger: `initdb` in a temporary directory, the
//! server listening on 127.0.0.1 only, on a free port (its Unix socket inside that directory), password
//! authentication (`scram-sha-256`) for every connection, a role `domesday` that is not a superuser and owns a
//! fresh database per [`PgCluster::database`] call. Stopped and deleted when dropped.
//!
//! The binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`), which `./test.sh`
//! installs: a test that needs them fails without them, it never passes silently. PostgreSQL refuses to run as
//! root, so under root (a CI container) the cluster runs as `nobody`, its directory given to that user.
//!
//! [`shared`] is the one cluster of a test process whose collectors run on PostgreSQL (`crate::store`): started on
//! first use, and stopped and deleted by a watchdog process once the test process is gone (a `static` is never
//! dropped).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::free_port;

/// The application role the tests' collectors connect as.
pub const APP_USER: &str = "domesday";

/// How long the server may take to accept connections.
const START_WITHIN: Duration = Duration::from_secs(60);

/// The directory of the newest installed PostgreSQL's binaries.
pub fn pg_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL not found under /usr/lib/postgresql/*/bin: install Debian's `postgresql` package (./test.sh does)"
        ),
    }
}

/// A random password (tests only: `RandomState` is seeded from the OS).
fn random_secret(prefix: &str) -> String {
    let mut out = String::from(prefix);
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(u64::from(std::process::id()));
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// The uid and gid to run the server as: this process's when not root, else `nobody`'s.
fn server_ids() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("running as root, PostgreSQL needs another user: no `nobody` in /etc/passwd");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().expect("nobody's uid"), f[3].parse().expect("nobody's gid")))
}

/// A running throwaway cluster (see the module's doc).
pub struct PgCluster {
    /// Dropped last: the server is stopped first.
    dir: tempfile::TempDir,
    server: Option<Child>,
    port: u16,
    superuser_password: String,
    app_password: String,
    next_db: AtomicU32,
}

impl PgCluster {
    /// Creates and starts a cluster; panics with the server's log when it cannot.
    pub fn start() -> PgCluster {
        PgCluster::start_with(&[])
    }

    /// [`PgCluster::start`] with server settings (`name=value`) that replace the test defaults: a benchmark
    /// turns `fsync`, `synchronous_commit` and `full_page_writes` back on to measure what a real server does.
    pub fn start_with(settings: &[&str]) -> PgCluster {
        let bin = pg_bin_dir();
        let ids = server_ids();
        let dir = tempfile::Builder::new().prefix("domesday-pg-").tempdir().expect("temp dir");
        let as_server = |c: &mut Command| {
            if let Some((uid, gid)) = ids {
                use std::os::unix::process::CommandExt;
                c.uid(uid).gid(gid);
            }
        };
        let give = |p: &Path| {
            if let Some((uid, gid)) = ids {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown to the server's user");
            }
        };
        give(dir.path());
        let superuser_password = random_secret("pg-super-");
        let app_password = random_secret("pg-app-");
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{superuser_password}\n")).expect("pwfile");
        give(&pwfile);
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        as_server(&mut initdb);
        let out = initdb.output().expect("run initdb");
        std::fs::remove_file(&pwfile).expect("remove pwfile");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Only TCP from 127.0.0.1, only with a password: no trust, no peer, no Unix socket entry.
        std::fs::write(
            data.join("pg_hba.conf"),
            "# domesday tests: password (SCRAM) on 127.0.0.1 only\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("pg_hba.conf");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log");
        let mut postgres = Command::new(bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_permissions=0700"])
            // A test cluster: its data is thrown away, so no fsync on the shared disk.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            // A test process's collectors share one cluster (`shared`): a few connections each, tests in parallel.
            .args(["-c", "shared_buffers=16MB", "-c", "max_connections=100"])
            // Later settings win.
            .args(settings.iter().flat_map(|s| ["-c", s]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        as_server(&mut postgres);
        let server = postgres.spawn().expect("spawn postgres");
        let mut cluster =
            PgCluster { dir, server: Some(server), port, superuser_password, app_password, next_db: AtomicU32::new(0) };
        cluster.wait_ready();
        let mut admin = cluster.admin();
        admin
            .batch_execute(&format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{}'", cluster.app_password))
            .expect("create the application role");
        cluster
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_WITHIN;
        loop {
            match self.admin_config().connect(postgres::NoTls) {
                Ok(_) => return,
                Err(e) => {
                    let exited = self.server.as_mut().and_then(|s| s.try_wait().ok().flatten());
                    if exited.is_some() || Instant::now() > deadline {
                        panic!("PostgreSQL did not start ({e}; exit {exited:?}); its log:\n{}", self.log());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn admin_config(&self) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password(&self.superuser_password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        c
    }

    /// A superuser connection to the `postgres` database.
    pub fn admin(&self) -> postgres::Client {
        self.admin_config().connect(postgres::NoTls).expect("connect as the superuser")
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (its backends are its children).
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        crate::read_log(&self.dir.path().join("postgres.log"))
    }

    /// A fresh, empty database owned by [`APP_USER`].
    pub fn database(&self) -> PgDb {
        let name = format!("ledger_{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        self.admin().batch_execute(&format!("CREATE DATABASE {name} OWNER {APP_USER}")).expect("create database");
        PgDb { port: self.port, name, password: self.app_password.clone() }
    }
}

/// The cluster shared by every collector of this test process (see the module's doc): started on first call.
pub fn shared() -> &'static PgCluster {
    static SHARED: std::sync::OnceLock<PgCluster> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let cluster = PgCluster::start();
        cluster.stop_after_this_process();
        cluster
    })
}

impl PgCluster {
    /// Leaves the cluster to a watchdog (`sh`, in the background, so that it outlives this process) that waits for
    /// this process to end, however it ends, then stops the server (fast shutdown, killed after 20 s) and deletes
    /// its directory: for a cluster that is never dropped.
    fn stop_after_this_process(&self) {
        let Some(server) = self.server.as_ref() else { return };
        let script = r#"(while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
kill -INT "$2" 2>/dev/null
i=0; while [ -e "$3/data/postmaster.pid" ] && [ "$i" -lt 100 ]; do sleep 0.2; i=$((i+1)); done
kill -KILL "$2" 2>/dev/null
rm -rf "$3") &"#;
        let started = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("domesday-pg-watchdog")
            .arg(std::process::id().to_string())
            .arg(server.id().to_string())
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the watchdog of the shared PostgreSQL cluster");
        assert!(started.success(), "the watchdog of the shared PostgreSQL cluster did not start: {started}");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            // SIGINT: PostgreSQL's fast shutdown (sessions ended, no checkpoint wait for a thrown-away cluster).
            let _ = Command::new("kill").arg("-INT").arg(s.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while s.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// One database of a [`PgCluster`], for the application role.
#[derive(Clone)]
pub struct PgDb {
    port: u16,
    pub name: String,
    password: String,
}

impl PgDb {
    /// `postgres://domesday@127.0.0.1:PORT/NAME`: the form of the collector's `db` key (no password in it).
    pub fn url(&self) -> String {
        format!("postgres://{APP_USER}@127.0.0.1:{}/{}", self.port, self.name)
    }

    /// The application role's password (for `db_password_file` or `PGPASSWORD`).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A connection as the application role.
    pub fn client(&self) -> postgres::Client {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user(APP_USER)
            .password(&self.password)
            .dbname(&self.name)
            .connect_timeout(Duration::from_secs(5));
        c.connect(postgres::NoTls).expect("connect as the application role")
    }
}
