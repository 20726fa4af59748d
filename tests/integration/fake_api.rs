//! A stand-in for the Kubernetes API server, for the probe process run for
//! real: plain HTTP/1.1 on loopback, answering from a routing function and
//! recording every request. No API server can be installed on these machines;
//! this lets the probe's own binary, with its own kube client, show what it
//! asks of one.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{Arc, Mutex},
};

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }
}

/// How the server answers a request.
pub enum Answer {
    Json(u16, Value),
    /// A watch: the head of a chunked response, then nothing until the client
    /// hangs up (an API server sends events as they happen; these tests need
    /// none after the list).
    Hold,
    /// A protocol switch: the connection is handed over as it is, the
    /// response's head not yet written.
    Upgrade(Box<dyn FnOnce(TcpStream) + Send>),
}

impl From<(u16, Value)> for Answer {
    fn from((status, body): (u16, Value)) -> Self {
        Self::Json(status, body)
    }
}

type Route = dyn Fn(&Request) -> Answer + Send + Sync;

pub struct FakeApi {
    pub address: SocketAddr,
    received: Arc<Mutex<Vec<Request>>>,
    /// The size of each JSON answer's body, by the request's path and query.
    answered: Arc<Mutex<Vec<(String, usize)>>>,
}

impl FakeApi {
    /// Serves on `listener` (bound wherever the client can reach it), one
    /// thread per connection, answering each request with `route`.
    pub fn serve<A: Into<Answer>>(
        listener: TcpListener,
        route: impl Fn(&Request) -> A + Send + Sync + 'static,
    ) -> Self {
        let address = listener.local_addr().expect("a bound listener");
        let received = Arc::new(Mutex::new(Vec::new()));
        let route: Arc<Route> = Arc::new(move |request: &Request| route(request).into());
        let answered = Arc::new(Mutex::new(Vec::new()));
        let log = Logs {
            received: Arc::clone(&received),
            answered: Arc::clone(&answered),
        };
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let route = Arc::clone(&route);
                let log = log.clone();
                std::thread::spawn(move || serve_connection(stream, &*route, &log));
            }
        });
        Self {
            address,
            received,
            answered,
        }
    }

    pub fn received(&self) -> Vec<Request> {
        self.received.lock().unwrap().clone()
    }

    /// Each JSON answer's path and query, and the size of its body in bytes.
    pub fn answered(&self) -> Vec<(String, usize)> {
        self.answered.lock().unwrap().clone()
    }

    /// A kubeconfig whose only context points at this server, sending
    /// `token` as its bearer token if there is one.
    pub fn write_kubeconfig(&self, path: &Path, token: Option<&str>) {
        write_kubeconfig(path, self.address, token);
    }
}

/// A kubeconfig whose only context points at `server`.
pub fn write_kubeconfig(path: &Path, server: SocketAddr, token: Option<&str>) {
    let user = match token {
        Some(token) => format!("\n    token: {token}"),
        None => " {}".to_owned(),
    };
    let config = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
         clusters:\n- name: fake\n  cluster:\n    server: http://{server}\n\
         users:\n- name: fake\n  user:{user}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n"
    );
    std::fs::write(path, config).expect("writing the kubeconfig");
}

#[derive(Clone)]
struct Logs {
    received: Arc<Mutex<Vec<Request>>>,
    answered: Arc<Mutex<Vec<(String, usize)>>>,
}

/// Reads requests off one keep-alive connection until the client closes it.
fn serve_connection(stream: TcpStream, route: &Route, log: &Logs) {
    let mut reader = BufReader::new(stream.try_clone().expect("a second handle"));
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(uri)) = (parts.next(), parts.next()) else {
            return;
        };
        let mut length = 0;
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let (name, value) = (name.to_ascii_lowercase(), value.trim().to_owned());
                if name == "content-length" {
                    length = value.parse().unwrap_or(0);
                }
                headers.push((name, value));
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request = Request {
            method: method.to_owned(),
            uri: uri.to_owned(),
            headers,
            body: serde_json::from_slice(&body).ok(),
        };
        log.received.lock().unwrap().push(request.clone());
        let (status, answer) = match route(&request) {
            Answer::Json(status, answer) => (status, answer),
            Answer::Hold => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if writer.write_all(head.as_bytes()).is_ok() {
                    // Until the client closes the connection.
                    let _ = std::io::copy(&mut reader, &mut std::io::sink());
                }
                return;
            }
            Answer::Upgrade(take_over) => {
                take_over(writer);
                return;
            }
        };
        let answer = serde_json::to_vec(&answer).expect("JSON");
        log.answered
            .lock()
            .unwrap()
            .push((request.uri.clone(), answer.len()));
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&answer).is_err() {
            return;
        }
    }
}

/// The API server's answer for an object that is not there.
pub fn not_found() -> (u16, Value) {
    (
        404,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not found",
        }),
    )
}
