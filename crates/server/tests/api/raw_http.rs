//! Raw HTTP/1.1 over TCP, for tests that need control a client library hides:
//! partial heads and bodies, held-open connections, `Expect: 100-continue`.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::helpers::{TestApp, ROOT_SECRET};

/// Far longer than any timeout under test: a test that waits this long has failed.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn root_basic() -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("root:{ROOT_SECRET}"));
    format!("Basic {encoded}")
}

/// A raw HTTP/1.1 response, read from a socket.
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Reads one response (head and a Content-Length body), skipping `100 Continue`.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream
                .read(&mut chunk)
                .await
                .expect("the response can be read");
            assert!(
                n > 0,
                "connection closed before a full response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            let Some(head_end) = text.find("\r\n\r\n") else {
                continue;
            };
            let head = text[..head_end].to_owned();
            if head.starts_with("HTTP/1.1 100") {
                buf.drain(..head_end + 4);
                continue;
            }
            let status: u16 = head[9..12].parse().unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + length {
                let body =
                    String::from_utf8_lossy(&buf[head_end + 4..head_end + 4 + length]).into_owned();
                return RawResponse { status, head, body };
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("a response arrives in time")
}

/// Waits until the server closes the connection; returns how long that took.
pub async fn closed_after(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let wait = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("the server closes the connection")
}

pub async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.socket_addr()).await.unwrap()
}
