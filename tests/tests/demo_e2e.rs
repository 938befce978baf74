//! The README's "run it" command: `domesday-collector demo` starts the
//! collector and an agent on this machine, the agent's energy reaches the
//! ledger, and Ctrl-C (SIGINT) stops both cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use domesday_tests::{Proc, binary, free_port, get_text};

#[test]
fn demo_runs_collector_and_agent_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("tmp");
    let (port, agent_port) = (free_port(), free_port());
    let mut demo = Proc(
        Command::new(binary("domesday-collector"))
            .args(["demo", "--dir"])
            .arg(dir.path().join("demo"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--agent-listen")
            .arg(format!("127.0.0.1:{agent_port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("demo"),
    );
    // The agent pushes every 10 s; its first push lands within about 15 s.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let hosts = get_text(&format!("http://127.0.0.1:{port}/api/v1/sites/local/hosts"), Duration::from_secs(20));
        let v: serde_json::Value = serde_json::from_str(&hosts).expect("json");
        if v["hosts"].as_array().is_some_and(|h| h.iter().any(|h| !h["last_sample"].is_null())) {
            break;
        }
        assert!(Instant::now() < deadline, "no host reached the demo collector: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        get_text(&format!("http://127.0.0.1:{agent_port}/metrics"), Duration::from_secs(5))
            .contains("domesday_host_info")
    );
    let _ = Command::new("kill").arg("-INT").arg(demo.0.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(s)) = demo.0.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    // The agent it started is gone too.
    assert!(std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_err(), "agent still listening");
    assert!(dir.path().join("demo/domesday.db").exists());
}
