//! The one HTTP/1.1 receiver of the test suites: the collector's delivery tests
//! (`collector/hooks/tests/`) and the integration tests (`tests/integration/harness.rs`) include this
//! file with `#[path]`. It serves each connection on a thread of its own, so blocking and async tests
//! use it alike, and a slow or hostile answer holds up no other request.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One request as it arrived: the request line and headers, and the body `Content-Length` announced.
#[derive(Debug, Clone)]
pub struct Request {
    pub head: String,
    pub body: Vec<u8>,
    /// When the request's head had arrived, for tests of how deliveries are spaced.
    pub at: std::time::Instant,
}

impl Request {
    /// The request target, e.g. `/hook`.
    pub fn path(&self) -> &str {
        self.head.split_whitespace().nth(1).unwrap_or("")
    }

    /// A header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A receiver on 127.0.0.1 that records every request, then answers as told. Stops when dropped.
pub struct HttpReceiver {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl HttpReceiver {
    /// Answers every request `200` on `port` (0: any free port).
    pub fn start(port: u16) -> HttpReceiver {
        Self::scripted(port, |_, stream| reply(stream, 200))
    }

    /// Answers with `statuses` in turn, then always with `fallback`.
    pub fn statuses(port: u16, statuses: &[u16], fallback: u16) -> HttpReceiver {
        let script = Mutex::new(statuses.iter().copied().collect::<VecDeque<_>>());
        Self::scripted(port, move |_, stream| {
            let status = script.lock().unwrap().pop_front().unwrap_or(fallback);
            reply(stream, status);
        })
    }

    /// Hands each request and its connection to `answer`, which writes whatever reply the test
    /// needs (or none).
    pub fn scripted(
        port: u16,
        answer: impl Fn(&Request, &mut TcpStream) + Send + Sync + 'static,
    ) -> HttpReceiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the HTTP receiver");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (recorded, stopped, answer) = (requests.clone(), stop.clone(), Arc::new(answer));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let (recorded, answer) = (recorded.clone(), answer.clone());
                std::thread::spawn(move || {
                    let Some(request) = read_request(&mut stream) else {
                        return;
                    };
                    recorded.lock().unwrap().push(request.clone());
                    answer(&request, &mut stream);
                });
            }
        });
        HttpReceiver {
            port,
            requests,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The bodies POSTed to `path`, as JSON.
    pub fn bodies(&self, path: &str) -> Vec<serde_json::Value> {
        self.posts(path).iter().map(Request::json).collect()
    }

    /// The heads of the requests POSTed to `path`.
    pub fn heads(&self, path: &str) -> Vec<String> {
        self.posts(path).into_iter().map(|r| r.head).collect()
    }

    fn posts(&self, path: &str) -> Vec<Request> {
        let line = format!("POST {path} ");
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .filter(|r| r.head.starts_with(&line))
            .cloned()
            .collect()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A reply with `status`, the body `scripted` and `Connection: close`.
pub fn reply(stream: &mut TcpStream, status: u16) {
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 {status} Scripted\r\nContent-Length: 8\r\nConnection: close\r\n\r\nscripted"
        )
        .as_bytes(),
    );
}

/// The request head and as much body as it announced; `None` when the peer went away first.
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
    };
    #[expect(
        clippy::disallowed_methods,
        reason = "the receiver serves each connection on a plain thread, where std's clock is right"
    )]
    let at = std::time::Instant::now();
    let mut request = Request {
        head: String::from_utf8_lossy(&data[..end]).into_owned(),
        body: Vec::new(),
        at,
    };
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while data.len() < end + 4 + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    request.body = data[end + 4..end + 4 + length].to_vec();
    Some(request)
}
