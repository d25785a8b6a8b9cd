//! Health probes and Prometheus metrics over HTTP, for Cloud Run worker-pool probes and a
//! metrics sidecar. Off unless `HEALTH_PORT` is set: nothing listens by default.
//!
//! - `GET /healthz/startup`: 200 once the clients are built and the start-up check passed.
//! - `GET /healthz/live`: 503 when the worker is stuck - messages are in flight but none has
//!   been acked or nacked for `LIVENESS_STALL_SECS` (storage hanging, a wedged task). An idle
//!   subscription is healthy: nothing in flight means nothing to be stuck on.
//! - `GET /metrics`: [`crate::stats::Stats::render`].

use crate::stats::Stats;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// What the probes report on.
#[derive(Debug)]
pub struct Health {
    stats: Arc<Stats>,
    started: AtomicBool,
    stall_timeout: Duration,
}

impl Health {
    pub fn new(stats: Arc<Stats>, stall_timeout: Duration) -> Self {
        Self { stats, started: AtomicBool::new(false), stall_timeout }
    }

    /// Marks start-up as done: the startup probe passes from now on.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// `Err` with the reason when the liveness probe should fail.
    pub fn live(&self) -> Result<(), String> {
        match self.stats.stalled_for() {
            Some(stalled) if stalled > self.stall_timeout => Err(format!(
                "stuck: {} messages in flight and none acked or nacked for {}s",
                self.stats.snapshot().in_flight,
                stalled.as_secs()
            )),
            _ => Ok(()),
        }
    }

    fn respond(&self, method: &Method, path: &str) -> (StatusCode, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        if method != Method::GET && method != Method::HEAD {
            return (StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
        }
        match path {
            "/healthz/startup" if self.started.load(Ordering::Relaxed) => {
                (StatusCode::OK, TEXT, "ok\n".into())
            }
            "/healthz/startup" => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "starting\n".into()),
            "/healthz/live" => match self.live() {
                Ok(()) => (StatusCode::OK, TEXT, "ok\n".into()),
                Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{reason}\n")),
            },
            "/metrics" => {
                (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.stats.render())
            }
            _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
        }
    }
}

/// A bound listener; binding happens at build time so a taken port fails the start-up.
#[derive(Debug)]
pub struct HealthServer {
    listener: TcpListener,
}

impl HealthServer {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self { listener: TcpListener::bind(addr).await? })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers requests until `stop` is cancelled.
    pub async fn serve(self, health: Arc<Health>, stop: CancellationToken) {
        if let Ok(addr) = self.listener.local_addr() {
            info!(%addr, event = "listening", "health and metrics endpoint listening");
        }
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: try again shortly.
                        debug!(error = %e, "health endpoint could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let health = health.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (status, content_type, body) =
                        health.respond(request.method(), request.uri().path());
                    let response = Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .body(Full::new(Bytes::from(body)));
                    async move {
                        Ok::<_, Infallible>(response.unwrap_or_else(|_| {
                            Response::new(Full::new(Bytes::from_static(b"error\n")))
                        }))
                    }
                });
                // One request per connection, and a client that sends nothing is dropped: the
                // tasks stay bounded by the probe rate.
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    () = stop.cancelled() => {}
                    result = connection => {
                        if let Err(e) = result {
                            debug!(%peer, error = %e, "health endpoint connection failed");
                        }
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_probe_waits_for_start_and_unknown_paths_are_404() {
        let health = Health::new(Arc::new(Stats::new()), Duration::from_secs(60));
        assert_eq!(
            health.respond(&Method::GET, "/healthz/startup").0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_started();
        assert_eq!(health.respond(&Method::GET, "/healthz/startup").0, StatusCode::OK);
        assert_eq!(health.respond(&Method::GET, "/nope").0, StatusCode::NOT_FOUND);
        assert_eq!(health.respond(&Method::POST, "/metrics").0, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn liveness_fails_only_when_work_in_flight_stops_settling() {
        let stats = Arc::new(Stats::new());
        let health = Health::new(stats.clone(), Duration::ZERO);
        assert!(health.live().is_ok(), "idle is healthy");
        stats.received(None);
        std::thread::sleep(Duration::from_millis(5));
        let reason = health.live().expect_err("stuck");
        assert!(reason.contains("1 messages in flight"), "{reason}");
        stats.written(1, Duration::ZERO);
        assert!(health.live().is_ok(), "settled");
    }
}
