//! The gRPC demo: `helloworld.Greeter` (unary `SayHello`, server-streaming
//! `SayHelloStream`, and `SetServing` to flip its health) and `grpc.health.v1.Health/Check`,
//! served by `berth-greeter` and called by the tests, east-west and north-south.
//!
//! Written on tonic's own server (`tonic::server::Grpc`) and client (`tonic::client::Grpc`)
//! with prost messages declared here: the same wire format and status handling as
//! generated code, without `protoc` (which this machine lacks).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::Stream;
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codegen::BoxFuture;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    /// `SayHelloStream`: how many replies (default 3).
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// Wait this long before answering (for deadline tests).
    #[prost(uint32, tag = "3")]
    pub delay_ms: u32,
    /// Answer with this gRPC status code instead of a reply (0: answer normally).
    #[prost(int32, tag = "4")]
    pub fail_code: i32,
    /// Only the greeter with this name fails (empty: any).
    #[prost(string, tag = "5")]
    pub fail_on: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Which greeter answered (its `--name`).
    #[prost(string, tag = "2")]
    pub served_by: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SetServingRequest {
    #[prost(bool, tag = "1")]
    pub serving: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; `status` is the `ServingStatus` enum.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

pub const SERVING: i32 = 1;
pub const NOT_SERVING: i32 = 2;

pub const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";
pub const SAY_HELLO_STREAM: &str = "/helloworld.Greeter/SayHelloStream";
pub const SET_SERVING: &str = "/helloworld.Greeter/SetServing";
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// The server's state.
#[derive(Debug)]
pub struct Greeter {
    pub name: String,
    pub serving: AtomicBool,
    pub calls: AtomicU64,
}

impl Greeter {
    pub fn new(name: &str) -> Arc<Greeter> {
        Arc::new(Greeter {
            name: name.to_string(),
            serving: AtomicBool::new(true),
            calls: AtomicU64::new(0),
        })
    }

    async fn reply(&self, req: HelloRequest) -> Result<HelloReply, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(req.delay_ms.min(60_000)))).await;
        }
        if req.fail_code != 0 && (req.fail_on.is_empty() || req.fail_on == self.name) {
            return Err(Status::new(
                tonic::Code::from_i32(req.fail_code),
                format!("{} was asked to fail", self.name),
            ));
        }
        Ok(HelloReply {
            message: format!("Hello {}", req.name),
            served_by: self.name.clone(),
        })
    }
}

struct SayHello(Arc<Greeter>);

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFuture<Response<HelloReply>, Status>;
    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
        let g = self.0.clone();
        Box::pin(async move {
            let mut resp = Response::new(g.reply(request.into_inner()).await?);
            if let Ok(v) = g.name.parse() {
                resp.metadata_mut().insert("x-served-by", v);
            }
            Ok(resp)
        })
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

struct SayHelloStream(Arc<Greeter>);

impl tonic::server::ServerStreamingService<HelloRequest> for SayHelloStream {
    type Response = HelloReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Response<ReplyStream>, Status>;
    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
        let g = self.0.clone();
        Box::pin(async move {
            let req = request.into_inner();
            let n = if req.count == 0 { 3 } else { req.count.min(10_000) };
            let first = g.reply(req.clone()).await?;
            let items: Vec<Result<HelloReply, Status>> = (0..n)
                .map(|i| {
                    Ok(HelloReply {
                        message: format!("{} #{}", first.message, i + 1),
                        served_by: first.served_by.clone(),
                    })
                })
                .collect();
            Ok(Response::new(Box::pin(futures_util::stream::iter(items)) as ReplyStream))
        })
    }
}

struct SetServing(Arc<Greeter>);

impl tonic::server::UnaryService<SetServingRequest> for SetServing {
    type Response = Empty;
    type Future = BoxFuture<Response<Empty>, Status>;
    fn call(&mut self, request: Request<SetServingRequest>) -> Self::Future {
        self.0.serving.store(request.into_inner().serving, Ordering::Relaxed);
        Box::pin(async { Ok(Response::new(Empty {})) })
    }
}

struct Check(Arc<Greeter>);

impl tonic::server::UnaryService<HealthCheckRequest> for Check {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<Response<HealthCheckResponse>, Status>;
    fn call(&mut self, request: Request<HealthCheckRequest>) -> Self::Future {
        let service = request.into_inner().service;
        let serving = self.0.serving.load(Ordering::Relaxed);
        Box::pin(async move {
            match service.as_str() {
                "" | "helloworld.Greeter" => Ok(Response::new(HealthCheckResponse {
                    status: if serving { SERVING } else { NOT_SERVING },
                })),
                other => Err(Status::not_found(format!("unknown service {other}"))),
            }
        })
    }
}

/// Answer one gRPC request.
pub async fn handle(g: Arc<Greeter>, req: http::Request<hyper::body::Incoming>) -> http::Response<tonic::body::Body> {
    match req.uri().path() {
        SAY_HELLO => {
            tonic::server::Grpc::new(ProstCodec::default())
                .unary(SayHello(g), req)
                .await
        }
        SAY_HELLO_STREAM => {
            tonic::server::Grpc::new(ProstCodec::default())
                .server_streaming(SayHelloStream(g), req)
                .await
        }
        SET_SERVING => {
            tonic::server::Grpc::new(ProstCodec::default())
                .unary(SetServing(g), req)
                .await
        }
        HEALTH_CHECK => {
            tonic::server::Grpc::new(ProstCodec::default())
                .unary(Check(g), req)
                .await
        }
        _ => Status::unimplemented(format!("{} is not a method here", req.uri().path())).into_http(),
    }
}

/// Serve gRPC (HTTP/2 without TLS) on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, g: Arc<Greeter>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let g = g.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let g = g.clone();
                async move { Ok::<_, Infallible>(handle(g, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http2_only()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Start a greeter on `addr` (port 0 for any); returns its address.
pub async fn start(addr: SocketAddr, name: &str) -> std::io::Result<(SocketAddr, Arc<Greeter>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let g = Greeter::new(name);
    tokio::spawn(serve(listener, g.clone()));
    Ok((local, g))
}

/// A client for the greeter's methods over one HTTP/2 channel.
#[derive(Debug, Clone)]
pub struct Client {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl Client {
    /// Connect to `addr`, sending `authority` as `:authority` (the gateway's Host rule, or
    /// the mesh service name on a sidecar's outbound listener).
    pub async fn connect(addr: SocketAddr, authority: &str) -> Result<Client, tonic::transport::Error> {
        let origin: http::Uri = format!("http://{authority}")
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("http://localhost"));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .origin(origin)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(Client {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    async fn unary<Q, R>(&mut self, path: &'static str, req: Request<Q>) -> Result<Response<R>, Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
        self.grpc
            .unary(req, PathAndQuery::from_static(path), ProstCodec::default())
            .await
    }

    pub async fn say_hello(&mut self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        self.unary(SAY_HELLO, req).await
    }

    pub async fn set_serving(&mut self, serving: bool) -> Result<Response<Empty>, Status> {
        self.unary(SET_SERVING, Request::new(SetServingRequest { serving }))
            .await
    }

    pub async fn check(&mut self, service: &str) -> Result<Response<HealthCheckResponse>, Status> {
        self.unary(
            HEALTH_CHECK,
            Request::new(HealthCheckRequest {
                service: service.to_string(),
            }),
        )
        .await
    }

    /// All replies of `SayHelloStream`, and the trailing metadata.
    pub async fn say_hello_stream(
        &mut self,
        req: HelloRequest,
    ) -> Result<(Vec<HelloReply>, tonic::metadata::MetadataMap), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
        let resp = self
            .grpc
            .server_streaming(
                Request::new(req),
                PathAndQuery::from_static(SAY_HELLO_STREAM),
                ProstCodec::default(),
            )
            .await?;
        let mut stream = resp.into_inner();
        let mut out = Vec::new();
        while let Some(r) = stream.message().await? {
            out.push(r);
        }
        let trailers = stream.trailers().await?.unwrap_or_default();
        Ok((out, trailers))
    }
}
