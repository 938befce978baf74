//! Transport security through the real binaries, with certificates generated
//! at test time: the collector serves https and requires client certificates
//! (`[tls]` with `client_ca_file`), reloads its certificate on SIGHUP without
//! dropping established connections (and keeps it when the new file is bad),
//! refuses bad files before binding; an agent pushes to it over mTLS with
//! `[push] ca_file`, `cert_file` and `key_file`, and spools when its client
//! certificate is missing. No test's output may hold a secret it used.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use domesday_tests::{
    COLLECTOR_LOG, Collector, Proc, Secrets, TestPki, assert_no_secrets, binary, collector_config, collector_output,
    fixture_copy, free_port, read_log, series_value, spawn_logged, start_agent_logged_with, tls_client, wait_for_log,
};

const TOKEN: &str = "tls-e2e-write-token-5e1f";

fn tls_table(pki: &TestPki, mtls: bool) -> String {
    let mut t = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        pki.path("server.crt").display().to_string(),
        pki.path("server.key").display().to_string()
    );
    if mtls {
        t.push_str(&format!("client_ca_file = {:?}\n", pki.path("ca.crt").display().to_string()));
    }
    t
}

/// `serve` in `dir` with its log in `dir/collector.log` (checked for its secrets when dropped), waited for until
/// `/readyz` answers to `client` over https.
fn spawn_collector(dir: &Path, config: &Path, port: u16, client: &reqwest::blocking::Client) -> Collector {
    let mut cmd = Command::new(binary("domesday-collector"));
    cmd.args(["serve", "--config"]).arg(config).env("DOMESDAY_LOG", "debug");
    let log = dir.join(COLLECTOR_LOG);
    let secrets = Secrets::of(&cmd).beside(dir);
    let (proc, secrets) = spawn_logged(&mut cmd, &log, secrets);
    let c = Collector { proc, port, dir: dir.to_path_buf(), secrets };
    let url = format!("https://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client.get(&url).send().is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "collector not ready over https:\n{}", read_log(&log));
        std::thread::sleep(Duration::from_millis(100));
    }
    c
}

fn sighup(p: &Proc) {
    let ok = Command::new("kill").arg("-HUP").arg(p.0.id().to_string()).status().expect("kill");
    assert!(ok.success());
}

fn get(client: &reqwest::blocking::Client, url: &str) -> Result<u16, String> {
    client.get(url).send().map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}"))
}

#[test]
fn the_collector_serves_mtls_and_rotates_its_certificate_on_sighup_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::new(&dir.path().join("pki"));
    let port = free_port();
    let config = collector_config(dir.path(), port, TOKEN, &tls_table(&pki, true));
    let log = dir.path().join(COLLECTOR_LOG);
    let (ca, cert, key) = (pki.path("ca.crt"), pki.path("client.crt"), pki.path("client.key"));
    // `old` keeps one connection open across the rotation.
    let old = tls_client(&ca, Some((&cert, &key)));
    let mut c = spawn_collector(dir.path(), &config, port, &old);
    let url = format!("https://127.0.0.1:{port}/readyz");
    let sites = format!("https://127.0.0.1:{port}/api/v1/sites");
    assert_eq!(get(&old, &sites), Ok(200));

    // Without a client certificate, over plain http, or trusting another CA: no answer.
    let e = get(&tls_client(&ca, None), &url).expect_err("no client certificate");
    assert!(e.contains("CertificateRequired") || e.contains("certificate"), "{e}");
    assert!(get(&reqwest::blocking::Client::new(), &format!("http://127.0.0.1:{port}/readyz")).is_err());
    assert!(get(&tls_client(&pki.path("other-ca.crt"), Some((&cert, &key))), &url).is_err());

    // Rotation: the new certificate comes from another CA, so a new handshake can only succeed
    // with a client that trusts it, and `old` only if its connection survived.
    std::fs::copy(pki.path("other-server.crt"), pki.path("server.crt")).expect("copy");
    std::fs::copy(pki.path("other-server.key"), pki.path("server.key")).expect("copy");
    sighup(&c.proc);
    wait_for_log(&log, "TLS certificate and key reloaded", Duration::from_secs(10));
    assert_eq!(get(&old, &url), Ok(200), "the established connection was dropped");
    let new = tls_client(&pki.path("other-ca.crt"), Some((&cert, &key)));
    assert_eq!(get(&new, &url), Ok(200));
    assert!(get(&tls_client(&ca, Some((&cert, &key))), &url).is_err(), "a new handshake got the old certificate");

    // A bad file on the next SIGHUP: the error is logged, the certificate in use stays.
    std::fs::write(pki.path("server.crt"), "not a certificate\n").expect("write");
    sighup(&c.proc);
    let text = wait_for_log(&log, "TLS reload failed", Duration::from_secs(10));
    assert!(text.contains("server.crt") && text.contains("holds no certificate"), "{text}");
    assert_eq!(get(&tls_client(&pki.path("other-ca.crt"), Some((&cert, &key))), &url), Ok(200));
    assert_eq!(get(&old, &url), Ok(200));

    assert!(c.proc.terminate(Duration::from_secs(15)).is_some_and(|s| s.success()), "{}", read_log(&log));
    let log_text = read_log(&log);
    let keys = pki.key_lines();
    let mut secrets: Vec<&str> = keys.iter().map(String::as_str).collect();
    secrets.push(TOKEN);
    assert_no_secrets(&[("collector serve", &log_text)], &secrets);
}

#[test]
fn bad_tls_files_stop_serve_before_it_binds_and_check_config_alike() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::new(&dir.path().join("pki"));
    // The port is held: a collector that bound before reading its files would fail on the port.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let missing = dir.path().join("missing.key");
    let table = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        pki.path("server.crt").display().to_string(),
        missing.display().to_string()
    );
    let config = collector_config(dir.path(), port, TOKEN, &table);
    let run = |cmd: &str| {
        let out = collector_output(
            Command::new(binary("domesday-collector")).args([cmd, "--config"]).arg(&config),
            dir.path(),
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mut outputs = Vec::new();
    for cmd in ["serve", "check-config"] {
        let (code, out, err) = run(cmd);
        assert_eq!(code, Some(2), "{cmd}: {out}{err}");
        // File and line of the key, the key, the file it names, why, and where to read more.
        assert!(err.contains("collector.toml:5:") && err.contains("key `key_file`"), "{cmd}: {err}");
        assert!(err.contains(&missing.display().to_string()) && err.contains("cannot read"), "{cmd}: {err}");
        assert!(!err.contains("cannot listen"), "{cmd} went on to bind: {err}");
        outputs.push(out + &err);
    }
    assert!(!dir.path().join("domesday.db").exists(), "serve opened the ledger before refusing its config");

    // The server's key where the certificate should be: refused, and not a line of the key shown.
    let table = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        pki.path("server.key").display().to_string(),
        pki.path("server.key").display().to_string()
    );
    let config = collector_config(dir.path(), port, TOKEN, &table);
    let out = collector_output(
        Command::new(binary("domesday-collector")).args(["check-config", "--config"]).arg(&config),
        dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("key `cert_file`") && err.contains("holds no certificate"), "{err}");
    outputs.push(err);

    // Valid files: check-config shows the paths, never the key.
    let config = collector_config(dir.path(), port, TOKEN, &tls_table(&pki, true));
    let out = collector_output(
        Command::new(binary("domesday-collector")).args(["check-config", "--config"]).arg(&config),
        dir.path(),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("[tls]") && text.contains("client_ca_file"), "{text}");
    outputs.push(text);
    let keys = pki.key_lines();
    let mut secrets: Vec<&str> = keys.iter().map(String::as_str).collect();
    secrets.push(TOKEN);
    let named: Vec<(&str, &str)> = outputs.iter().map(|o| ("collector", o.as_str())).collect();
    assert_no_secrets(&named, &secrets);
    drop(held);
}

fn push_tables(pki: &TestPki, port: u16, token: &Path, spool: &Path, with_cert: bool) -> String {
    let mut t = format!(
        "[push]\nurl = \"https://127.0.0.1:{port}/api/v1/write\"\ntoken_file = {:?}\ninterval = \"300ms\"\nspool_dir = {:?}\nca_file = {:?}\n",
        token.display().to_string(),
        spool.display().to_string(),
        pki.path("ca.crt").display().to_string()
    );
    if with_cert {
        t.push_str(&format!(
            "cert_file = {:?}\nkey_file = {:?}\n",
            pki.path("client.crt").display().to_string(),
            pki.path("client.key").display().to_string()
        ));
    }
    t
}

fn agent_metrics(port: u16) -> String {
    domesday_tests::get_text(&format!("http://127.0.0.1:{port}/metrics"), Duration::from_secs(10))
}

#[test]
fn an_agent_pushes_over_mtls_to_a_private_ca_and_spools_without_its_client_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::new(&dir.path().join("pki"));
    let port = free_port();
    let config = collector_config(dir.path(), port, TOKEN, &tls_table(&pki, true));
    let clog = dir.path().join(COLLECTOR_LOG);
    let client = tls_client(&pki.path("ca.crt"), Some((&pki.path("client.crt"), &pki.path("client.key"))));
    let mut collector = spawn_collector(dir.path(), &config, port, &client);

    let mut agents: Vec<(domesday_tests::Agent, PathBuf, u16)> = Vec::new();
    let mut fixtures = Vec::new();
    for (host, with_cert) in [("tls-host", true), ("no-cert-host", false)] {
        let (fx, root) = fixture_copy("intel-2s");
        std::fs::write(root.join("push.token"), format!("{TOKEN}\n")).expect("token");
        let tables = push_tables(&pki, port, &root.join("push.token"), &root.join("spool"), with_cert);
        let log = root.join("agent.log");
        let aport = free_port();
        let p = start_agent_logged_with(
            &root,
            aport,
            "100ms",
            &tables,
            &[("DOMESDAY_LOG", "debug")],
            &log,
            &["--site", "caen-1", "--host", host],
        );
        agents.push((p, log, aport));
        fixtures.push(fx);
    }

    // The agent with its certificate: its energy is booked.
    let hosts = format!("https://127.0.0.1:{port}/api/v1/sites/caen-1/hosts");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = client.get(&hosts).send().and_then(|r| r.text()).unwrap_or_default();
        if body.contains("\"tls-host\"") {
            assert!(!body.contains("no-cert-host"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "nothing booked from the mTLS agent: {body}\n{}", read_log(&agents[0].1));
        std::thread::sleep(Duration::from_millis(200));
    }
    // The agent's /metrics is rendered once per tick: the push the collector booked shows from the next one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = agent_metrics(agents[0].2);
        if series_value(&m, "domesday_push_samples_total", &["result=\"sent\""]).unwrap_or(0.0) > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no sent samples counted: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The agent without: refused at the handshake, spooled, counted as a TLS failure, said why.
    let text = wait_for_log(&agents[1].1, "spooling to disk", Duration::from_secs(20));
    assert!(text.contains("CertificateRequired") || text.contains("certificate required"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = agent_metrics(agents[1].2);
        let spooled = series_value(&m, "domesday_push_samples_total", &["result=\"spooled\""]).unwrap_or(0.0);
        let tls = series_value(&m, "domesday_push_errors_total", &["reason=\"tls\""]).unwrap_or(0.0);
        if spooled > 0.0 && tls > 0.0 {
            assert_eq!(series_value(&m, "domesday_push_samples_total", &["result=\"sent\""]).unwrap_or(0.0), 0.0);
            assert_eq!(series_value(&m, "domesday_push_errors_total", &["reason=\"connect\""]), Some(0.0), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "nothing spooled or no tls error counted: {m}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut outputs = Vec::new();
    for (mut p, log, _) in agents {
        assert!(p.terminate(Duration::from_secs(20)).is_some(), "agent did not stop");
        outputs.push(read_log(&log));
    }
    assert!(collector.proc.terminate(Duration::from_secs(15)).is_some());
    outputs.push(read_log(&clog));
    let keys = pki.key_lines();
    let mut secrets: Vec<&str> = keys.iter().map(String::as_str).collect();
    secrets.push(TOKEN);
    let named: Vec<(&str, &str)> = outputs.iter().map(|o| ("agent or collector log", o.as_str())).collect();
    assert_no_secrets(&named, &secrets);
}

/// An agent on the `intel-2s` fixture serving `/metrics` with the web configuration `web`, logging at debug
/// level: its fixture (kept while the test runs), port, log and process.
fn agent_with_web_config(web: &Path) -> (tempfile::TempDir, u16, PathBuf, domesday_tests::Agent) {
    let (fx, root) = fixture_copy("intel-2s");
    let port = free_port();
    let log = root.join("agent.log");
    let web_arg = web.display().to_string();
    let agent = start_agent_logged_with(
        &root,
        port,
        "200ms",
        "",
        &[("DOMESDAY_LOG", "debug")],
        &log,
        &["--web-config-file", &web_arg],
    );
    (fx, port, log, agent)
}

/// The agent's `/metrics` behind the exporter web configuration: TLS with
/// client certificates and basic auth with a bcrypt hash, checked the way a
/// scraper meets it, then by a real Prometheus with the scrape configuration
/// an exporter with the same web configuration would need.
#[test]
fn agent_metrics_take_the_exporter_web_configuration_and_a_prometheus_scrape_config_works_unchanged() {
    const PASSWORD: &str = "scrape-pass-8c21d0";
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::new(&dir.path().join("pki"));
    let hash = bcrypt::hash(PASSWORD, 10).expect("bcrypt");
    // Relative paths: the toolkit reads them from the web configuration file's directory.
    let web = pki.path("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS12\nbasic_auth_users:\n  prometheus: {hash}\n"
        ),
    )
    .expect("web.yml");
    let (_fx, port, log, mut agent) = agent_with_web_config(&web);
    // The web configuration holds the hash; the password in clear is the test's.
    agent.also_secret("basic-auth password of prometheus", PASSWORD);
    let url = format!("https://127.0.0.1:{port}/metrics");
    let (ca, cert, key) = (pki.path("ca.crt"), pki.path("client.crt"), pki.path("client.key"));
    let client = tls_client(&ca, Some((&cert, &key)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(&url).send().is_err() {
        assert!(Instant::now() < deadline, "agent not serving https:\n{}", read_log(&log));
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = |req: reqwest::blocking::RequestBuilder| req.send().map(|r| r.status().as_u16());
    assert_eq!(status(client.get(&url)).ok(), Some(401), "no credentials");
    let r = client.get(&url).basic_auth("prometheus", Some("wrong")).send().expect("send");
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("www-authenticate").is_some_and(|v| v.to_str().unwrap_or("").starts_with("Basic")));
    assert_eq!(status(client.get(&url).basic_auth("nobody", Some(PASSWORD))).ok(), Some(401));
    let r = client.get(&url).basic_auth("prometheus", Some(PASSWORD)).send().expect("send");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().unwrap_or_default().contains("domesday_host_power_watts"));
    // Plain http, or TLS without a client certificate: no answer at all.
    assert!(reqwest::blocking::Client::new().get(format!("http://127.0.0.1:{port}/metrics")).send().is_err());
    assert!(tls_client(&ca, None).get(&url).basic_auth("prometheus", Some(PASSWORD)).send().is_err());

    // A real Prometheus with basic_auth (password from a file) and tls_config.
    std::fs::write(dir.path().join("scrape.pass"), PASSWORD).expect("pass");
    let prom_dir = dir.path().join("prom");
    std::fs::create_dir_all(&prom_dir).expect("dir");
    let (_prom, prom_port) = domesday_tests::prom::start_prometheus(
        &prom_dir,
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: domesday-agent\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n      cert_file: {cert}\n      key_file: {key}\n    basic_auth:\n      username: prometheus\n      password_file: {pass}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
            pass = dir.path().join("scrape.pass").display(),
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = domesday_tests::prom::query(prom_port, "up{job=\"domesday-agent\"} == 1").unwrap_or_default();
        let power = domesday_tests::prom::query(prom_port, "domesday_host_power_watts").unwrap_or_default();
        if !up.is_empty() && !power.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus did not scrape the agent: up={up:?}\n{}", read_log(&log));
        std::thread::sleep(Duration::from_millis(300));
    }

    assert!(agent.terminate(Duration::from_secs(20)).is_some(), "agent did not stop");
    let text = read_log(&log);
    let keys = pki.key_lines();
    let mut secrets: Vec<&str> = keys.iter().map(String::as_str).collect();
    secrets.extend([PASSWORD, hash.as_str()]);
    assert_no_secrets(&[("agent run", &text)], &secrets);
}

/// The agent's web configuration file read again on SIGHUP: a new password and a new server certificate (from
/// another CA) take effect without a restart; a file with a password where the hash goes, or one that would turn
/// https into http, is refused with its place and the previous configuration keeps serving.
#[test]
fn the_agent_reads_its_web_configuration_again_on_sighup_and_keeps_the_previous_one_when_the_new_is_bad() {
    const OLD: &str = "scrape-old-pass-71c2";
    const NEW: &str = "scrape-new-pass-3d9a";
    const PLAIN: &str = "plain-pass-never-shown-5b";
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::new(&dir.path().join("pki"));
    let web = pki.path("web.yml");
    let write_web = |server: &str, users: &str| {
        let tls = format!(
            "tls_server_config:\n  cert_file: {server}.crt\n  key_file: {server}.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
        );
        let text = if server.is_empty() { String::new() } else { tls };
        std::fs::write(&web, format!("{text}basic_auth_users:\n{users}")).expect("web.yml");
    };
    let (old_hash, new_hash) = (bcrypt::hash(OLD, 4).expect("bcrypt"), bcrypt::hash(NEW, 4).expect("bcrypt"));
    write_web("server", &format!("  prometheus: {old_hash}\n"));
    let (_fx, port, log, mut agent) = agent_with_web_config(&web);
    for (kind, pw) in [("old password", OLD), ("new password", NEW), ("password in the hash's place", PLAIN)] {
        agent.also_secret(kind, pw);
    }
    let url = format!("https://127.0.0.1:{port}/metrics");
    let (cert, key) = (pki.path("client.crt"), pki.path("client.key"));
    let status = |ca: &str, pw: &str| {
        tls_client(&pki.path(ca), Some((&cert, &key)))
            .get(&url)
            .basic_auth("prometheus", Some(pw))
            .send()
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("{e:?}"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while status("ca.crt", OLD).is_err() {
        assert!(Instant::now() < deadline, "agent not serving https:\n{}", read_log(&log));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status("ca.crt", OLD), Ok(200));
    assert_eq!(status("ca.crt", NEW), Ok(401));
    let reloads = |needle: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = read_log(&log);
            if text.matches(needle).count() >= n {
                return text;
            }
            assert!(Instant::now() < deadline, "{needle:?} not logged {n} times:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // The new password and the other CA's server certificate, without a restart.
    write_web("other-server", &format!("  prometheus: {new_hash}\n"));
    sighup(&agent);
    reloads("SIGHUP: web_config_file reloaded", 1);
    assert_eq!(status("other-ca.crt", NEW), Ok(200));
    assert_eq!(status("other-ca.crt", OLD), Ok(401), "the old password still opens /metrics");
    assert!(status("ca.crt", NEW).is_err(), "a new connection still gets the old certificate");

    // A password where its hash goes: refused with the file, line and user; the previous configuration stays.
    write_web("other-server", &format!("  prometheus: {PLAIN}\n"));
    sighup(&agent);
    let text = reloads("web_config_file reload failed", 1);
    let line = text.lines().find(|l| l.contains("reload failed")).unwrap_or_default();
    assert!(line.contains("web.yml:7:") && line.contains("prometheus") && line.contains("bcrypt"), "{line}");
    assert_eq!(status("other-ca.crt", NEW), Ok(200));

    // https cannot become http without a restart: refused, still https.
    write_web("", &format!("  prometheus: {new_hash}\n"));
    sighup(&agent);
    let text = reloads("web_config_file reload failed", 2);
    assert!(text.contains("switching /metrics from https to http needs a restart"), "{text}");
    assert_eq!(status("other-ca.crt", NEW), Ok(200));

    assert!(agent.terminate(Duration::from_secs(20)).is_some(), "agent did not stop");
    let text = read_log(&log);
    let keys = pki.key_lines();
    let mut secrets: Vec<&str> = keys.iter().map(String::as_str).collect();
    secrets.extend([OLD, NEW, PLAIN, old_hash.as_str(), new_hash.as_str()]);
    assert_no_secrets(&[("agent run", &text)], &secrets);
}
