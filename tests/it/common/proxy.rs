//! Loopback proxies that inject faults a real registry or daemon cannot be made to produce on demand: a registry
//! answering 500 or an empty body for one request, refusing one tag's PUT, losing a blob, holding a request; and a
//! BuildKit connection that drops mid-build. Everything else is forwarded unchanged to the real component, so the
//! tests still talk to the real registry and the real BuildKit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = BoxBody<Bytes, hyper::Error>;

/// What to do with a matching request instead of forwarding it.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and a registry error envelope `{"errors":[{"code":CODE,"message":"injected"}]}`.
    Status(u16, &'static str),
    /// Answer 200 with an empty body (and no digest header).
    EmptyOk,
    /// Answer 404 `BLOB_UNKNOWN`, as if the blob were gone.
    Missing,
    /// Hold the request (never forward or answer it) until the proxy is dropped.
    Hold,
}

/// One rule: requests with `method` whose path contains `path` get `fault`, the first `times` times (None: always).
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: &'static str,
    pub path: String,
    pub fault: Fault,
    pub times: Option<usize>,
}

impl Rule {
    pub fn new(method: &'static str, path: impl Into<String>, fault: Fault) -> Rule {
        Rule {
            method,
            path: path.into(),
            fault,
            times: None,
        }
    }

    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    /// `METHOD path` of every request, in order, and whether a fault answered it.
    log: Vec<(String, bool)>,
}

/// A registry proxy on `127.0.0.1:<port>`, forwarding to `upstream` (`host:port`).
pub struct RegistryProxy {
    pub addr: String,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl RegistryProxy {
    pub fn start(upstream: &str) -> RegistryProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream: SocketAddr = upstream.parse().expect("upstream is host:port");
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let shared = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (state, client) = (shared.clone(), client.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(req, upstream, state.clone(), client.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RegistryProxy {
            addr: addr.to_string(),
            state,
            runtime: Some(runtime),
        }
    }

    /// Adds a rule (checked in order; the first that matches answers).
    pub fn rule(&self, rule: Rule) {
        self.state.lock().unwrap().rules.push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// The requests seen so far (`METHOD path`) and whether a fault answered each.
    pub fn log(&self) -> Vec<(String, bool)> {
        self.state.lock().unwrap().log.clone()
    }

    /// Waits until a fault answered (or holds) a request with `method` and a path containing `path`.
    pub fn wait_for_fault(&self, method: &str, path: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let prefix = format!("{method} ");
            if self
                .log()
                .iter()
                .any(|(l, fault)| *fault && l.starts_with(&prefix) && l.contains(path))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

async fn handle(
    mut req: Request<Incoming>,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    client: Client<HttpConnector, Incoming>,
) -> Result<Response<Body>, Infallible> {
    let line = format!("{} {}", req.method(), req.uri().path());
    let fault = {
        let mut st = state.lock().unwrap();
        let hit = st.rules.iter_mut().find(|r| {
            r.method == req.method().as_str()
                && req.uri().path().contains(&r.path)
                && r.times != Some(0)
        });
        let fault = hit.map(|r| {
            if let Some(n) = &mut r.times {
                *n -= 1;
            }
            r.fault.clone()
        });
        st.log.push((line, fault.is_some()));
        fault
    };
    match fault {
        Some(Fault::Status(code, err)) => {
            let body = format!(r#"{{"errors":[{{"code":"{err}","message":"injected"}}]}}"#);
            let mut r = full(StatusCode::from_u16(code).unwrap(), body);
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok(r)
        }
        Some(Fault::EmptyOk) => Ok(full(StatusCode::OK, Bytes::new())),
        Some(Fault::Missing) => Ok(full(
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
        )),
        Some(Fault::Hold) => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        None => {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            *req.uri_mut() = format!("http://{upstream}{path}").parse().unwrap();
            Ok(match client.request(req).await {
                Ok(resp) => resp.map(|b| b.boxed()),
                Err(e) => full(StatusCode::BAD_GATEWAY, e.to_string()),
            })
        }
    }
}

/// A unix-socket proxy in front of the Docker socket that can cut every connection through it at once, as a
/// daemon that dies mid-build would.
pub struct SocketProxy {
    pub path: PathBuf,
    cut: tokio::sync::watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl SocketProxy {
    pub fn start(upstream: &Path) -> SocketProxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(&path).unwrap()
        };
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let upstream = upstream.to_owned();
        runtime.spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                let (upstream, mut cut_rx) = (upstream.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::UnixStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        SocketProxy {
            path,
            cut,
            runtime: Some(runtime),
            _dir: dir,
        }
    }

    /// Closes every connection through the proxy, now and from now on.
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
