//! A small remote_write 1.0 receiver for end-to-end tests, on 127.0.0.1 with
//! plain std (HTTP/1.1 keep-alive, one thread per connection). It checks every
//! request (method, path, the five headers, the bearer token, snappy and
//! protobuf, the size limits), records what it decoded, and answers according
//! to its [`Mode`]: accept (204), a given status with a body, or down (the
//! port is closed and open connections are dropped).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use domesday_model::remote_write::{self, TimeSeries, WriteRequest};

/// How the receiver answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 204 No Content, after checking the request.
    Accept,
    /// This status and body (e.g. 503 or 400).
    Status(u16, String),
    /// Port closed: new connections are refused, open ones dropped unanswered.
    Down,
}

/// One request the receiver read.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// The status answered (0 when dropped because the receiver was down).
    pub status: u16,
    pub request: WriteRequest,
    pub compressed_bytes: usize,
}

impl Received {
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn samples(&self) -> usize {
        self.request.timeseries.iter().map(|t| t.samples.len()).sum()
    }
}

#[derive(Debug)]
struct State {
    mode: Mode,
    received: Vec<Received>,
    /// Protocol problems seen (bad header, token, body): should stay empty.
    problems: Vec<String>,
    connections: usize,
    /// Added before each answer (a slow collector).
    delay: Duration,
}

struct Inner {
    port: u16,
    token: String,
    state: Mutex<State>,
    /// Tells the current accept loop to close the port.
    closing: Mutex<Option<Arc<AtomicBool>>>,
}

/// The receiver; stops listening when dropped.
pub struct MockReceiver {
    inner: Arc<Inner>,
}

/// Largest body decoded (the agent must stay far below: 1 MiB compressed).
const MAX_UNCOMPRESSED: usize = 32 << 20;
pub const PATH: &str = "/api/v1/write";

impl MockReceiver {
    /// Starts accepting on a free loopback port; requests must carry `Bearer token`.
    pub fn start(token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock receiver");
        let port = listener.local_addr().expect("addr").port();
        let inner = Arc::new(Inner {
            port,
            token: token.to_string(),
            state: Mutex::new(State {
                mode: Mode::Accept,
                received: Vec::new(),
                problems: Vec::new(),
                connections: 0,
                delay: Duration::ZERO,
            }),
            closing: Mutex::new(None),
        });
        serve(&inner, listener);
        MockReceiver { inner }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{PATH}", self.inner.port)
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Switches mode; `Down` closes the port, leaving `Down` opens it again.
    pub fn set_mode(&self, mode: Mode) {
        let was_down = {
            let mut st = self.state();
            let was = st.mode == Mode::Down;
            st.mode = mode.clone();
            was
        };
        if mode == Mode::Down && !was_down {
            let flag = self.inner.closing.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(f) = flag {
                f.store(true, Ordering::SeqCst);
                // Wake the accept loop so it drops the listener.
                let _ = TcpStream::connect(("127.0.0.1", self.inner.port));
            }
            // Wait until the port is really closed.
            let deadline = Instant::now() + Duration::from_secs(5);
            while TcpStream::connect(("127.0.0.1", self.inner.port)).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        } else if mode != Mode::Down && was_down {
            let deadline = Instant::now() + Duration::from_secs(5);
            let listener = loop {
                match TcpListener::bind(("127.0.0.1", self.inner.port)) {
                    Ok(l) => break l,
                    Err(e) if Instant::now() > deadline => panic!("mock receiver cannot reopen its port: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            serve(&self.inner, listener);
        }
    }

    /// Delays every answer by `d` (a slow collector).
    pub fn set_delay(&self, d: Duration) {
        self.state().delay = d;
    }

    /// Every request read so far.
    pub fn received(&self) -> Vec<Received> {
        self.state().received.clone()
    }

    /// The series of the accepted requests, in arrival order.
    pub fn accepted_series(&self) -> Vec<TimeSeries> {
        self.state().received.iter().filter(|r| r.accepted()).flat_map(|r| r.request.timeseries.clone()).collect()
    }

    /// Protocol problems seen (wrong header, token, body, limits).
    pub fn problems(&self) -> Vec<String> {
        self.state().problems.clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state().connections
    }

    /// Waits until `pred` holds on the requests received (bounded).
    pub fn wait_for(&self, what: &str, within: Duration, pred: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let (done, n, problems) = {
                let st = self.state();
                (pred(&st.received), st.received.len(), st.problems.clone())
            };
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mock receiver: timed out waiting for {what}; {n} requests, problems {problems:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MockReceiver {
    fn drop(&mut self) {
        self.set_mode(Mode::Down);
    }
}

fn serve(inner: &Arc<Inner>, listener: TcpListener) {
    let closing = Arc::new(AtomicBool::new(false));
    *inner.closing.lock().unwrap_or_else(|e| e.into_inner()) = Some(closing.clone());
    let inner = inner.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if closing.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            inner.state.lock().unwrap_or_else(|e| e.into_inner()).connections += 1;
            let inner = inner.clone();
            std::thread::spawn(move || connection(&inner, stream));
        }
    });
}

/// Serves requests on one keep-alive connection.
fn connection(inner: &Inner, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut out) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let Some((request_line, headers, body)) = read_request(&mut reader) else { return };
        let (mode, delay) = {
            let st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            (st.mode.clone(), st.delay)
        };
        std::thread::sleep(delay);
        let problems = check(inner, &request_line, &headers, &body);
        let decoded = remote_write::decode(&body, MAX_UNCOMPRESSED);
        let (status, text) = match (&mode, &decoded) {
            (Mode::Down, _) => (0, String::new()),
            (_, _) if problems.iter().any(|p| p.contains("token")) => (401, "bad token".to_string()),
            (_, Err(e)) => (400, e.to_string()),
            (Mode::Accept, Ok(_)) => (204, String::new()),
            (Mode::Status(s, t), Ok(_)) => (*s, t.clone()),
        };
        {
            let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            st.problems.extend(problems);
            st.received.push(Received {
                at: Instant::now(),
                status,
                request: decoded.unwrap_or_default(),
                compressed_bytes: body.len(),
            });
        }
        if status == 0 {
            let _ = out.shutdown(std::net::Shutdown::Both);
            return;
        }
        let reason = match status {
            204 => "No Content",
            400 => "Bad Request",
            401 => "Unauthorized",
            429 => "Too Many Requests",
            503 => "Service Unavailable",
            _ => "Status",
        };
        let response = if status == 204 {
            format!("HTTP/1.1 204 {reason}\r\n\r\n")
        } else {
            format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
        };
        if out.write_all(response.as_bytes()).and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

type Request = (String, Vec<(String, String)>, Vec<u8>);

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let request_line = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok())?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some((request_line, headers, body))
}

fn check(inner: &Inner, request_line: &str, headers: &[(String, String)], body: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if request_line != format!("POST {PATH} HTTP/1.1") {
        problems.push(format!("request line {request_line:?}"));
    }
    for (k, want) in [
        ("content-encoding", "snappy"),
        ("content-type", "application/x-protobuf"),
        ("x-prometheus-remote-write-version", "0.1.0"),
    ] {
        if get(k) != Some(want) {
            problems.push(format!("header {k}: {:?}", get(k)));
        }
    }
    if !get("user-agent").is_some_and(|ua| ua.starts_with("domesday-agent/") || ua.starts_with("domesday-collector/")) {
        problems.push(format!("user-agent {:?}", get("user-agent")));
    }
    if get("authorization") != Some(format!("Bearer {}", inner.token).as_str()) {
        problems.push("authorization: wrong or missing bearer token".into());
    }
    if body.len() > 1 << 20 {
        problems.push(format!("body of {} bytes above 1 MiB", body.len()));
    }
    if let Ok(req) = remote_write::decode(body, MAX_UNCOMPRESSED) {
        let n: usize = req.timeseries.iter().map(|t| t.samples.len()).sum();
        if n > 10_000 {
            problems.push(format!("{n} samples in one request"));
        }
        for ts in &req.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            if !names.windows(2).all(|w| w[0] < w[1]) {
                problems.push(format!("labels not sorted or duplicated: {names:?}"));
            }
            if ts.labels.iter().any(|l| l.value.is_empty()) {
                problems.push(format!("empty label value in {names:?}"));
            }
        }
    }
    problems
}

/// A series' identity for comparisons: its labels as `name=value` pairs.
pub fn series_key(ts: &TimeSeries) -> String {
    ts.labels.iter().map(|l| format!("{}={}", l.name, l.value)).collect::<Vec<_>>().join(",")
}
