//! The readers against mock devices on 127.0.0.1: a Modbus TCP meter
//! (tokio-modbus' server) whose energy register advances, a Redfish PDU and a
//! Prometheus query API (axum), and the polling loop booking into a real
//! SQLite ledger.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use super::modbus::{ModbusReader, RegisterSpec};
use super::prometheus::PrometheusReader;
use super::reader::MeterStats;
use super::reading::{ReadError, Reading};
use super::redfish::RedfishReader;
use crate::config::{MeterConfig, Secret};
use crate::ledger::LedgerReader;
use crate::ledger::Policy;
use crate::ledger::query::EnergyQuery;
use crate::ledger::sqlite::{SqliteReader, SqliteWriter};

/// The ledger's default gap.
const GAP: Duration = Duration::from_secs(300);

/// Words of a 64-bit value, most significant first.
fn words64(v: u64) -> Vec<u16> {
    (0..4).rev().map(|i| (v >> (16 * i)) as u16).collect()
}

/// A Modbus meter: unit id 1; holding 3203..3206 an int64 Wh register that
/// advances by `step` after each read; input 0x48 a float32 kWh register
/// (word-swapped) advancing by 0.5 kWh per read.
struct MockMeter {
    wh: AtomicU64,
    step: u64,
    kwh_halves: AtomicU64,
    reads: AtomicU64,
}

impl tokio_modbus::server::Service for MockMeter {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        if req.slave != 1 {
            return std::future::ready(Err(ExceptionCode::GatewayTargetDevice));
        }
        let answer = match req.request {
            Request::ReadHoldingRegisters(3203, 4) => {
                self.reads.fetch_add(1, Ordering::SeqCst);
                let v = self.wh.fetch_add(self.step, Ordering::SeqCst);
                Ok(Response::ReadHoldingRegisters(words64(v)))
            }
            Request::ReadInputRegisters(0x48, 2) => {
                let halves = self.kwh_halves.fetch_add(1, Ordering::SeqCst);
                let bits = (halves as f32 / 2.0).to_bits();
                Ok(Response::ReadInputRegisters(vec![bits as u16, (bits >> 16) as u16]))
            }
            Request::ReadHoldingRegisters(..) | Request::ReadInputRegisters(..) => {
                Err(ExceptionCode::IllegalDataAddress)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        std::future::ready(answer)
    }
}

/// Serves `meter` on `addr` (port 0: any) until the returned task is aborted.
async fn serve_modbus(meter: Arc<MockMeter>, addr: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind modbus");
    let addr = listener.local_addr().expect("addr");
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let task = tokio::spawn(async move {
        let on_connected = move |stream, _peer| {
            let meter = meter.clone();
            async move { Ok(Some((meter, stream))) }
        };
        let _ = server.serve(&on_connected, |_e| {}).await;
    });
    (addr, task)
}

fn meter(toml: &str) -> MeterConfig {
    toml::from_str(toml).expect("meter config")
}

fn modbus_meter(addr: SocketAddr, extra: &str) -> MeterConfig {
    meter(&format!(
        "id = \"tgbt\"\nrole = \"utility_in\"\nkind = \"modbus\"\nunit = \"kWh\"\naddress = \"{addr}\"\n{extra}"
    ))
}

fn values(r: Result<Vec<Reading>, ReadError>) -> Vec<i64> {
    r.expect("read").iter().map(|r| r.value_micro).collect()
}

#[tokio::test]
async fn modbus_registers_are_read_decoded_and_reconnected() {
    let mock = Arc::new(MockMeter {
        wh: AtomicU64::new(5_000_000_000),
        step: 1_250,
        kwh_halves: AtomicU64::new(2000),
        reads: AtomicU64::new(0),
    });
    let (addr, server) = serve_modbus(mock.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    // Schneider PM5xxx style: int64 Wh at 3204 (address 3203), booked in kWh with scale 0.001.
    let cfg = modbus_meter(addr, "register = 3203\ntype = \"int64\"\nscale = 0.001\n");
    let mut r = ModbusReader::new(RegisterSpec::from_config(&cfg).expect("spec"));
    assert_eq!(values(r.read().await), vec![5_000_000_000_000]);
    assert_eq!(values(r.read().await), vec![5_000_001_250_000]);
    // Eastron SDM630 style: float32 kWh in input register 0x0048 (here word-swapped).
    let cfg =
        modbus_meter(addr, "register = 0x48\ntype = \"float32\"\nfunction = \"input\"\nword_order = \"little\"\n");
    let mut f = ModbusReader::new(RegisterSpec::from_config(&cfg).expect("spec"));
    assert_eq!(values(f.read().await), vec![1_000_000_000]);
    assert_eq!(values(f.read().await), vec![1_000_500_000]);
    // The same register as a holding register does not exist: the exception names the fix.
    let cfg = modbus_meter(addr, "register = 0x48\ntype = \"float32\"\n");
    let e =
        ModbusReader::new(RegisterSpec::from_config(&cfg).expect("spec")).read().await.expect_err("no such register");
    assert!(matches!(&e, ReadError::Missing(m) if m.contains("0-based")), "{e}");
    let cfg = modbus_meter(addr, "register = 3203\ntype = \"int64\"\nunit_id = 7\n");
    let e = ModbusReader::new(RegisterSpec::from_config(&cfg).expect("spec")).read().await.expect_err("wrong unit id");
    assert_eq!(e.reason().as_str(), "io", "{e}");

    // The meter goes away: io errors, no panic; it comes back: the reader reconnects.
    server.abort();
    let _ = server.await;
    let e = r.read().await.expect_err("server gone");
    assert_eq!(e.reason().as_str(), "io", "{e}");
    r.reset();
    let e = r.read().await.expect_err("nothing listens");
    assert!(matches!(&e, ReadError::Io(m) if m.contains("cannot connect")), "{e}");
    let (_, server) = serve_modbus(mock.clone(), addr).await;
    let before = mock.wh.load(Ordering::SeqCst);
    assert_eq!(values(r.read().await), vec![before as i64 * 1000]);
    server.abort();
}

#[tokio::test]
async fn the_polling_loop_books_the_register_increase_exactly() {
    let mock = Arc::new(MockMeter {
        wh: AtomicU64::new(12_345_678_901),
        step: 1_250,
        kwh_halves: AtomicU64::new(0),
        reads: AtomicU64::new(0),
    });
    let (addr, server) = serve_modbus(mock.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("ledger.db");
    let store = SqliteWriter::open(&db, Policy::default()).expect("ledger");
    let (writer, thread) = crate::ledger::writer::spawn(
        Box::new(store),
        Box::new(|_, _| {}),
        Box::new(|_| {}),
        crate::ledger::writer::PRUNE_EVERY,
        Box::new(|| true),
    )
    .expect("writer");
    let stats = Arc::new(MeterStats::default());
    let cfg = modbus_meter(addr, "register = 3203\ntype = \"int64\"\nscale = 0.001\ninterval = \"1s\"\n");
    let start = crate::ledger::writer::now_ms();
    let ledger: Arc<dyn crate::ledger::LedgerReader> =
        Arc::new(crate::ledger::sqlite::SqliteReader::new(&db, Policy::default()));
    let task = tokio::spawn(super::reader::run("caen-1".into(), cfg, GAP, writer.clone(), stats.clone(), ledger));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stats.status("caen-1", "tgbt").map(|s| s.readings).unwrap_or(0) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no readings: {:?}", stats.status("caen-1", "tgbt"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    let _ = task.await;
    server.abort();
    drop(writer);
    tokio::task::spawn_blocking(move || thread.join()).await.expect("join").expect("writer thread");
    let reads = mock.reads.load(Ordering::SeqCst);
    let status = stats.status("caen-1", "tgbt").expect("status");
    assert_eq!(status.readings, reads, "every read register value was booked");
    // Increase = (reads − 1) steps of 1250 Wh = 4.5 MJ each.
    let reader = SqliteReader::new(&db, Policy::default());
    let minute = 60_000;
    let q = EnergyQuery {
        site: "caen-1".into(),
        host: None,
        meter: Some("tgbt".into()),
        role: None,
        from_ms: start / minute * minute - minute,
        to_ms: (crate::ledger::writer::now_ms() / minute + 2) * minute,
    };
    let report = reader.energy(&q).expect("energy");
    assert_eq!(report.energy_uj(), i128::from(reads - 1) * 1_250 * 3_600 * 1_000_000, "{report:?}");
    assert_eq!(report.samples, reads);
}

/// A Redfish PDU on 127.0.0.1 that wants Basic `monitor:s3cret`.
async fn serve_redfish(joules: Arc<AtomicU64>) -> SocketAddr {
    use axum::routing::get;
    let authorized = |h: &HeaderMap| {
        h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Basic bW9uaXRvcjpzM2NyZXQ=")
            && h.get("odata-version").and_then(|v| v.to_str().ok()) == Some("4.0")
    };
    let app = axum::Router::new()
        .route(
            "/redfish/v1/PowerEquipment/RackPDUs/1",
            get(move |h: HeaderMap| async move {
                if !authorized(&h) {
                    return (StatusCode::UNAUTHORIZED, "{}".to_string());
                }
                (StatusCode::OK, r##"{"@odata.type":"#PowerDistribution.v1_3_0.PowerDistribution","EquipmentType":"RackPDU","Metrics":{"@odata.id":"/redfish/v1/PowerEquipment/RackPDUs/1/Metrics"}}"##.to_string())
            }),
        )
        .route(
            "/redfish/v1/PowerEquipment/RackPDUs/1/Metrics",
            get(move |h: HeaderMap| {
                let joules = joules.clone();
                async move {
                    if !authorized(&h) {
                        return (StatusCode::UNAUTHORIZED, "{}".to_string());
                    }
                    let j = joules.load(Ordering::SeqCst);
                    // EnergykWh is coarse (whole kWh); EnergyJoules is what must be read.
                    let body = format!(
                        r##"{{"@odata.type":"#PowerDistributionMetrics.v1_4_0.PowerDistributionMetrics","PowerWatts":{{"Reading":6438}},"EnergykWh":{{"Reading":{}}},"EnergyJoules":{{"Reading":{j}}}}}"##,
                        j / 3_600_000
                    );
                    (StatusCode::OK, body)
                }
            }),
        )
        .route("/redfish/v1/bad", get(|| async { (StatusCode::OK, "{\"EnergykWh\": {\"Reading\": 1") }))
        .route("/redfish/v1/down", get(|| async { StatusCode::SERVICE_UNAVAILABLE.into_response() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn redfish_meter(url: &str, password: Option<&str>) -> MeterConfig {
    let mut m = meter(&format!(
        "id = \"pdu-a1\"\nrole = \"pdu_out\"\nkind = \"redfish\"\nunit = \"kWh\"\nurl = \"{url}\"\nallow_plain_http = true\nusername = \"monitor\"\ntimeout = \"2s\"\n"
    ));
    m.password = password.map(Secret::new);
    m
}

#[tokio::test]
async fn redfish_pdus_are_read_with_basic_auth_and_energy_joules() {
    let joules = Arc::new(AtomicU64::new(365_400_000)); // 101.5 kWh
    let addr = serve_redfish(joules.clone()).await;
    let pdu = format!("http://{addr}/redfish/v1/PowerEquipment/RackPDUs/1");
    let mut r = RedfishReader::new(&redfish_meter(&pdu, Some("s3cret"))).expect("reader");
    // The PDU resource links its Metrics; EnergyJoules wins over the coarse EnergykWh.
    assert_eq!(values(r.read().await), vec![101_500_000]);
    joules.store(1_800_000, Ordering::SeqCst); // reset (ResetMetrics): handed on as is
    assert_eq!(values(r.read().await), vec![500_000]);

    let mut wrong = RedfishReader::new(&redfish_meter(&pdu, Some("guess"))).expect("reader");
    let e = wrong.read().await.expect_err("401");
    assert!(matches!(&e, ReadError::Permission(m) if m.contains("401") && !m.contains("guess")), "{e}");
    let mut none = RedfishReader::new(&redfish_meter(&pdu, None)).expect("reader");
    assert_eq!(none.read().await.expect_err("401").reason().as_str(), "permission");
    for (path, reason) in [("/redfish/v1/bad", "parse"), ("/redfish/v1/down", "io"), ("/redfish/v1/nope", "missing")] {
        let mut r =
            RedfishReader::new(&redfish_meter(&format!("http://{addr}{path}"), Some("s3cret"))).expect("reader");
        let e = r.read().await.expect_err(path);
        assert_eq!(e.reason().as_str(), reason, "{path}: {e}");
    }
    let closed = format!("http://127.0.0.1:{}/redfish/v1", free_port());
    let e = RedfishReader::new(&redfish_meter(&closed, None)).expect("reader").read().await.expect_err("refused");
    assert_eq!(e.reason().as_str(), "io", "{e}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

#[tokio::test]
async fn prometheus_meters_read_raw_samples_of_one_series() {
    use axum::routing::get;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/api/v1/query",
        get(move |Query(q): Query<std::collections::HashMap<String, String>>| {
            let s = s.clone();
            async move {
                let query = q.get("query").cloned().unwrap_or_default();
                if let Ok(mut s) = s.lock() {
                    s.push(query);
                }
                r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"water_m3_total","meter":"eau"},"values":[[1767225600,"1000.5"],[1767229200,"1003"]]}]}}"#
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let m = meter(&format!(
        "id = \"eau\"\nrole = \"water_in\"\nkind = \"prometheus\"\nunit = \"m3\"\nurl = \"http://{addr}\"\nquery = 'water_m3_total{{meter=\"eau\"}}[5m]'\n"
    ));
    let poll = PrometheusReader::new(&m, GAP).expect("reader").read().await.expect("poll");
    assert_eq!(
        poll.readings,
        vec![
            Reading { ts_ms: 1_767_225_600_000, value_micro: 1_000_500_000 },
            Reading { ts_ms: 1_767_229_200_000, value_micro: 1_003_000_000 }
        ]
    );
    assert_eq!(
        seen.lock().map(|s| s.clone()).unwrap_or_default(),
        vec!["water_m3_total{meter=\"eau\"}[5m]".to_string()]
    );
}

#[tokio::test]
async fn silent_devices_time_out_and_the_next_read_reconnects() {
    use super::reader::{Source, read_within};
    // Accepts connections and never answers: a hung gateway or PDU.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicU64::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let short = Duration::from_millis(300);
    let cfg = modbus_meter(addr, "register = 3203\ntype = \"int64\"\n");
    let mut s = Source::new("s", &cfg, GAP, None).expect("source").expect("a reader");
    let e = read_within(&mut s, short).await.expect_err("silent");
    assert_eq!(e, ReadError::Timeout(short));
    s.reset();
    let _ = read_within(&mut s, short).await.expect_err("silent again");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a reset reader opens a new connection");
    // Redfish and Prometheus: reqwest's own timeout is the same `timeout` and the same reason.
    let mut m = redfish_meter(&format!("http://{addr}/redfish/v1"), None);
    m.timeout = Some(crate::config::Dur(short));
    let e = RedfishReader::new(&m).expect("reader").read().await.expect_err("silent");
    assert_eq!(e.reason().as_str(), "timeout", "{e}");
}
