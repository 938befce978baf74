//! Helpers shared by the end-to-end tests that need the dev-only mocks
//! (tokio-modbus' server): included with `mod common;`.

use std::sync::Arc;

use tokio_modbus::{ExceptionCode, Response, SlaveRequest};

/// Serves a mock Modbus TCP device on 127.0.0.1 from a thread of its own; returns the port.
pub fn start_modbus<S>(device: Arc<S>) -> u16
where
    S: tokio_modbus::server::Service<Request = SlaveRequest<'static>, Response = Response, Exception = ExceptionCode>
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind modbus");
            tx.send(listener.local_addr().expect("addr").port()).expect("port");
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = move |stream, _peer| {
                let device = device.clone();
                async move { Ok(Some((device, stream))) }
            };
            let _ = server.serve(&on_connected, |_e| {}).await;
        });
    });
    rx.recv().expect("modbus port")
}
