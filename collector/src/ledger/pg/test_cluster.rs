//! A throwaway PostgreSQL cluster for the collector's own tests of the PostgreSQL store (the property test of
//! `store_tests.rs` and the concurrent writers' test): `initdb` in a temporary directory, the server on 127.0.0.1
//! and a free port, password authentication (`scram-sha-256`) only, stopped and deleted when dropped. The binaries
//! come from Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`, installed by `./test.sh`): without
//! them the tests fail, never pass silently. The end-to-end tests have a fuller harness (`domesday_tests::pg`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const PASSWORD: &str = "collector-unit-tests";

fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, b): &(u32, PathBuf)| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("PostgreSQL not found under /usr/lib/postgresql/*/bin (./test.sh installs it)").1
}

/// Under root PostgreSQL must run as another user: `nobody`'s uid and gid.
fn server_ids() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let f: Vec<&str> = passwd.lines().find(|l| l.starts_with("nobody:")).expect("a `nobody` user").split(':').collect();
    Some((f[2].parse().expect("uid"), f[3].parse().expect("gid")))
}

pub struct Cluster {
    dir: tempfile::TempDir,
    server: Child,
    port: u16,
    next: AtomicU32,
}

impl Cluster {
    pub fn start() -> Cluster {
        use std::os::unix::process::CommandExt;
        let bin = bin_dir();
        let ids = server_ids();
        let dir = tempfile::Builder::new().prefix("domesday-pg-unit-").tempdir().expect("temp dir");
        let give = |p: &std::path::Path| {
            if let Some((u, g)) = ids {
                std::os::unix::fs::chown(p, Some(u), Some(g)).expect("chown");
            }
        };
        give(dir.path());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).expect("pwfile");
        give(&pwfile);
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((u, g)) = ids {
            initdb.uid(u).gid(g);
        }
        let out = initdb.output().expect("initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(data.join("pg_hba.conf"), "host all all 127.0.0.1/32 scram-sha-256\n").expect("pg_hba");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        give(&dir.path().join("log"));
        let mut pg = Command::new(bin.join("postgres"));
        pg.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "shared_buffers=16MB", "-c", "max_connections=40"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some((u, g)) = ids {
            pg.uid(u).gid(g);
        }
        let server = pg.spawn().expect("postgres");
        let c = Cluster { dir, server, port, next: AtomicU32::new(0) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.config("postgres").connect(postgres::NoTls).is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(c.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn config(&self, db: &str) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1").port(self.port).user("postgres").password(PASSWORD).dbname(db);
        c.connect_timeout(Duration::from_secs(5));
        c
    }

    /// A fresh database as the collector's `db` names it (the superuser, with its password): for what goes
    /// through the collector's own connection ([`super::connect`]).
    pub fn target(&self) -> crate::db::PgTarget {
        crate::db::PgTarget {
            user: "postgres".into(),
            host: "127.0.0.1".into(),
            port: self.port,
            dbname: self.create_database(),
            password: Some(domesday_model::secret::Secret::new(PASSWORD.to_string())),
            password_from: crate::db::PasswordFrom::None,
        }
    }

    /// A fresh database; returns a function that connects to it.
    pub fn database(&self) -> impl Fn() -> postgres::Client + Send + Sync + use<> {
        let config = self.config(&self.create_database());
        move || config.connect(postgres::NoTls).expect("connect")
    }

    fn create_database(&self) -> String {
        let name = format!("unit_{}", self.next.fetch_add(1, Ordering::Relaxed));
        let mut admin = self.config("postgres").connect(postgres::NoTls).expect("connect");
        admin.batch_execute(&format!("CREATE DATABASE {name}")).expect("create database");
        name
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-INT").arg(self.server.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.server.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
