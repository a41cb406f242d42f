//! The agent's HTTP endpoint, on a thread of its own so that a slow apply never delays a
//! scrape: `/metrics` (Prometheus), `/ready` (readiness: the node is filtered as asked) and
//! `/healthz` (the agent runs).
use std::{convert::Infallible, net::TcpListener, sync::Arc};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;

use super::{Shared, log, metrics};

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

const PLAIN: &str = "text/plain; charset=utf-8";

async fn handle(
    request: Request<hyper::body::Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "GET only\n".into(),
        ));
    }
    Ok(match request.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            metrics::render(&shared),
        ),
        "/ready" | "/readyz" => {
            let (ready, why) = metrics::readiness(&shared);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, PLAIN, why)
        }
        "/healthz" | "/livez" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/" => text(
            StatusCode::OK,
            PLAIN,
            "portfw agent: /metrics (Prometheus), /ready (readiness), /healthz (liveness)\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    })
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .context("handing the metrics socket to the event loop")?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn("accepting a metrics connection failed", &[("error", &e)]);
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, shared.clone()));
            // A client that goes away mid-request is no news.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves on `listener` (already bound, so that a taken port fails the agent's start) from a
/// thread of its own.
pub fn spawn(listener: TcpListener, shared: Arc<Shared>) -> anyhow::Result<()> {
    listener
        .set_nonblocking(true)
        .context("making the metrics socket non-blocking")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the metrics server's event loop")?;
    std::thread::Builder::new()
        .name("portfw-metrics".into())
        .spawn(move || {
            if let Err(e) = runtime.block_on(serve(listener, shared)) {
                log::error(&format!("the metrics server stopped: {e:#}"), &[]);
            }
        })
        .context("starting the metrics server's thread")?;
    Ok(())
}
