//! The Prometheus endpoint: `/metrics`, `/healthz` and `/readyz` on one listener, served by
//! hyper 1 (HTTP/1.1 only: what Prometheus and probes speak) until the app has stopped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::EndpointError;
use crate::health::Health;
use crate::metrics;

/// How often histograms are folded into their buckets between scrapes, so memory stays bounded.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Bucket bounds in seconds: 1 ms to 5 min for handler durations and retry lateness.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Bucket bounds in seconds: 1 s to 7 days for the age of dead letters.
const AGE_BUCKETS: &[f64] = &[
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86400.0,
    3.0 * 86400.0,
    7.0 * 86400.0,
];

/// The recorder this crate installed, shared by every app of the process: the global recorder
/// can be set only once, so a second app (or a restarted one) serves the same registry.
static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the Prometheus recorder as the global one, or returns the one installed by an
/// earlier app of this process. Fails when another recorder is installed.
pub(crate) fn install_recorder() -> Result<PrometheusHandle, EndpointError> {
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = buckets(PrometheusBuilder::new()).build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).map_err(|_| EndpointError::RecorderInstalled)?;
    *installed = Some(handle.clone());
    Ok(handle)
}

fn buckets(builder: PrometheusBuilder) -> PrometheusBuilder {
    let latency = [metrics::HANDLER_DURATION, metrics::RETRY_LATENESS];
    let with_latency = latency.into_iter().fold(builder, |builder, name| {
        builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), LATENCY_BUCKETS)
            .expect("the buckets are not empty")
    });
    with_latency
        .set_buckets_for_metric(Matcher::Full(metrics::DEAD_LETTER_AGE.to_owned()), AGE_BUCKETS)
        .expect("the buckets are not empty")
}

/// Binds `addr`; a failure names the setting.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, EndpointError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| EndpointError::Bind { addr, source })
}

/// Serves until `stop`, then stops accepting and ends the open connections (scrapes are
/// short; a probe that was cut off asks again).
pub(crate) async fn serve(
    listener: TcpListener,
    recorder: PrometheusHandle,
    health: Health,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = upkeep.tick() => recorder.run_upkeep(),
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors, mostly: wait a little rather than spin.
                        tracing::warn!(%error, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (recorder, health) = (recorder.clone(), health.clone());
                let service = hyper::service::service_fn(move |request| {
                    let response = answer(&request, &recorder, &health);
                    async move { Ok::<_, Infallible>(response) }
                });
                connections.spawn(async move {
                    let served = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(error) = served {
                        tracing::debug!(%error, "metrics endpoint: connection ended");
                    }
                });
            }
            // Reaps finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// The response to one request.
fn answer(
    request: &Request<Incoming>,
    recorder: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match request.uri().path() {
        "/metrics" => respond(StatusCode::OK, "text/plain; version=0.0.4", recorder.render()),
        "/healthz" => {
            let report = health.report();
            respond(status(report.is_live()), "application/json", report.to_json())
        }
        "/readyz" => {
            let report = health.report();
            respond(status(report.is_ready()), "application/json", report.to_json())
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain", body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
