//! The sidecar's side of the control API: one HTTP/2 connection over mTLS to each gateway
//! replica (registration, heartbeats, health pushes and the mesh long poll share it),
//! re-dialled with the current certificate when it breaks. [`ControlPool`] knows the
//! replicas (from `BERTH_GATEWAY`, then from the mesh view) and fails over between them.
//!
//! Outgoing control connections bind to the inbound address when it is a specific IP,
//! so the gateway sees the task's address as the source.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_common::control::ErrorResponse;
use berth_common::mtls::{CertSlot, PeerPolicy, TrustAnchors, client_config};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("cannot reach the gateway's control API at {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("the gateway refused ({code}): {error}")]
    Refused { status: u16, code: String, error: String },
    #[error("bad answer from the gateway: {0}")]
    Protocol(String),
    #[error("the gateway did not answer within {0:?}")]
    Timeout(Duration),
}

/// TCP (from `bind` when given) then TLS to the gateway's control API.
pub(crate) async fn dial(
    gateway: SocketAddr,
    bind: Option<IpAddr>,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, ControlError> {
    let socket = if gateway.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| ControlError::Connect(gateway, e.to_string()))?;
    if let Some(ip) = bind {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| ControlError::Connect(gateway, format!("binding {ip}: {e}")))?;
    }
    let tcp = tokio::time::timeout(Duration::from_secs(5), socket.connect(gateway))
        .await
        .map_err(|_| ControlError::Connect(gateway, "timed out".into()))?
        .map_err(|e| ControlError::Connect(gateway, e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("gateway.berth").map_err(|e| ControlError::Protocol(e.to_string()))?;
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| ControlError::Connect(gateway, "TLS handshake timed out".into()))?
    .map_err(|e| ControlError::Connect(gateway, format!("TLS: {e}")))
}

/// Turn a non-2xx answer into the gateway's stated reason.
pub(crate) fn refusal(status: StatusCode, body: &[u8]) -> ControlError {
    let e: ErrorResponse = serde_json::from_slice(body).unwrap_or(ErrorResponse {
        code: status.as_u16().to_string(),
        error: String::from_utf8_lossy(body).into_owned(),
    });
    ControlError::Refused {
        status: status.as_u16(),
        code: e.code,
        error: e.error,
    }
}

/// The multiplexed control connection, with the task's certificate.
pub(crate) struct ControlClient {
    gateway: SocketAddr,
    bind: Option<IpAddr>,
    cfg: Arc<rustls::ClientConfig>,
    conn: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl ControlClient {
    pub(crate) fn new(
        gateway: SocketAddr,
        bind: Option<IpAddr>,
        slot: Arc<CertSlot>,
        anchors: TrustAnchors,
    ) -> Result<ControlClient, rustls::Error> {
        let mut cfg = client_config(Some(slot), anchors, PeerPolicy::AnyGateway)?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ControlClient {
            gateway,
            bind,
            cfg: Arc::new(cfg),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, ControlError> {
        let mut conn = self.conn.lock().await;
        if let Some(s) = conn.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let tls = dial(self.gateway, self.bind, self.cfg.clone()).await?;
        let (send, driver) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ControlError::Connect(self.gateway, format!("HTTP/2: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "control connection closed");
            }
        });
        *conn = Some(send.clone());
        Ok(send)
    }

    /// Dial now (else the first call does): `berth-sidecar check` times its exchange
    /// without the handshake.
    pub(crate) async fn connect(&self) -> Result<(), ControlError> {
        self.sender().await.map(|_| ())
    }

    /// One request; a broken connection is re-dialled on the next call.
    pub(crate) async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), ControlError> {
        let attempt = async {
            let mut send = self.sender().await?;
            send.ready()
                .await
                .map_err(|e| ControlError::Connect(self.gateway, e.to_string()))?;
            let mut req = http::Request::builder()
                .method(method)
                .uri(format!("https://gateway.berth{path_and_query}"));
            if body.is_some() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            req = req.header(
                berth_common::control::VERSION_HEADER,
                berth_common::control::PROTOCOL_VERSION,
            );
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| ControlError::Protocol(e.to_string()))?;
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| ControlError::Connect(self.gateway, e.to_string()))?;
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), berth_common::http::MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map_err(|e| ControlError::Protocol(e.to_string()))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| ControlError::Timeout(limit))?
    }

    /// POST a JSON message and decode the JSON answer; a refusal carries its reason.
    pub(crate) async fn post<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        msg: &T,
    ) -> Result<R, ControlError> {
        let body = serde_json::to_vec(msg).map_err(|e| ControlError::Protocol(e.to_string()))?;
        let (status, bytes) = self
            .call(Method::POST, path, Some(body), Duration::from_secs(5))
            .await?;
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ControlError::Protocol(e.to_string()))
    }
}

/// The gateway replicas and a control connection to each.
pub(crate) struct ControlPool {
    bind: Option<IpAddr>,
    slot: Arc<CertSlot>,
    anchors: TrustAnchors,
    bootstrap: Vec<SocketAddr>,
    clients: std::sync::Mutex<std::collections::BTreeMap<SocketAddr, Arc<ControlClient>>>,
    replicas: tokio::sync::watch::Sender<Vec<SocketAddr>>,
    preferred: std::sync::atomic::AtomicUsize,
}

impl ControlPool {
    pub(crate) fn new(
        bootstrap: Vec<SocketAddr>,
        bind: Option<IpAddr>,
        slot: Arc<CertSlot>,
        anchors: TrustAnchors,
    ) -> Self {
        ControlPool {
            bind,
            slot,
            anchors,
            replicas: tokio::sync::watch::Sender::new(bootstrap.clone()),
            bootstrap,
            clients: Default::default(),
            preferred: Default::default(),
        }
    }

    /// The replicas as last known.
    pub(crate) fn replicas(&self) -> Vec<SocketAddr> {
        self.replicas.borrow().clone()
    }

    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<Vec<SocketAddr>> {
        self.replicas.subscribe()
    }

    /// The replicas a mesh view lists (`IP:PORT`); an empty or unreadable list keeps the
    /// bootstrap ones.
    pub(crate) fn set_replicas(&self, listed: &[String]) {
        let mut parsed: Vec<SocketAddr> = listed.iter().filter_map(|g| g.parse().ok()).collect();
        if parsed.is_empty() {
            parsed = self.bootstrap.clone();
        }
        parsed.sort();
        parsed.dedup();
        self.replicas.send_if_modified(|cur| {
            if *cur == parsed {
                return false;
            }
            tracing::info!(replicas = ?parsed, "gateway replicas");
            *cur = parsed;
            true
        });
    }

    /// The connection to one replica (made on first use).
    pub(crate) fn client(&self, addr: SocketAddr) -> Result<Arc<ControlClient>, ControlError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&addr) {
            return Ok(c.clone());
        }
        let c = Arc::new(
            ControlClient::new(addr, self.bind, self.slot.clone(), self.anchors.clone())
                .map_err(|e| ControlError::Protocol(e.to_string()))?,
        );
        clients.insert(addr, c.clone());
        Ok(c)
    }

    /// The replicas, starting with the one that answered last.
    pub(crate) fn in_order(&self) -> Vec<SocketAddr> {
        let mut list = self.replicas();
        if !list.is_empty() {
            let start = self.preferred.load(std::sync::atomic::Ordering::Relaxed) % list.len();
            list.rotate_left(start);
        }
        list
    }

    fn prefer(&self, addr: SocketAddr) {
        if let Some(i) = self.replicas().iter().position(|a| *a == addr) {
            self.preferred.store(i, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// One request to whichever replica answers, trying the others when one cannot be
    /// reached. A refusal is an answer: it is returned, not retried elsewhere.
    pub(crate) async fn call_any(
        &self,
        method: Method,
        path_and_query: &str,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), ControlError> {
        let mut last = ControlError::Protocol("no gateway replica is known".into());
        for addr in self.in_order() {
            match self
                .client(addr)?
                .call(method.clone(), path_and_query, None, limit)
                .await
            {
                Ok(r) => {
                    self.prefer(addr);
                    return Ok(r);
                }
                Err(e) => {
                    tracing::debug!(replica = %addr, error = %e, "replica unavailable; trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }
}
