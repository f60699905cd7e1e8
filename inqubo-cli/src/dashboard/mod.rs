//! The web dashboard that `inqubo monitor --listen` serves: a few pages over a JSON API, both
//! read from the run history the monitor keeps, plus Prometheus `/metrics`.
//!
//! The pages are one static HTML shell and a small script bundled into the binary (no CDN, works
//! offline). The script renders every value from the API as text, never as HTML, so a step's
//! input or output cannot inject markup. Live updates come from `/api/events`, a Server-Sent
//! Events stream of the events the monitor records.
//!
//! Safe by default: the monitor binds 127.0.0.1 unless told otherwise; with `--token`, every
//! `/api` request needs `Authorization: Bearer <token>` (or `?token=` for the event stream,
//! which browsers cannot give headers); without one, requests must name a local host, so that
//! another web site cannot reach the API through DNS rebinding. Buttons post JSON, which a
//! cross-site form cannot send.

mod api;

use std::sync::Arc;

use axum::{
    Router,
    extract::{ConnectInfo, Request, State as Extract},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use inqubo::LifecycleEvent;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::AnyPool;
use tokio::sync::broadcast;

use crate::broker::Context;

/// What every request handler shares.
#[derive(Clone)]
pub(crate) struct State {
    context: Context,
    pool: AnyPool,
    live: broadcast::Sender<Arc<str>>,
    metrics: PrometheusHandle,
    token: Option<Arc<str>>,
    /// `--allow-network-without-token`: serve peers on other machines without a token.
    open_to_network: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("prefix", &self.context.prefix)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl State {
    pub(crate) fn new(
        context: Context,
        pool: AnyPool,
        live: broadcast::Sender<Arc<str>>,
        metrics: PrometheusHandle,
        token: Option<String>,
        open_to_network: bool,
    ) -> Self {
        Self {
            context,
            pool,
            live,
            metrics,
            token: token.map(Into::into),
            open_to_network,
        }
    }
}

/// The JSON the event stream sends for one lifecycle event.
pub(crate) fn event_json(event: &LifecycleEvent) -> String {
    serde_json::json!({
        "workflow": event.workflow,
        "step": event.step,
        "event": event.kind,
        "run_id": event.run_id,
        "attempt": event.attempt,
    })
    .to_string()
}

/// Serves the dashboard on `listener` until the process ends.
pub(crate) async fn serve(listener: tokio::net::TcpListener, state: State) -> anyhow::Result<()> {
    // Each request knows its peer's address, for `local_only`.
    let service = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service).await?;
    Ok(())
}

/// Whether the monitor may serve on `address`: a loopback address always; another only with a
/// token, or when the operator opted out by name. The error says why and what to do.
pub(crate) fn check_listen(
    address: std::net::SocketAddr,
    token: bool,
    open_to_network: bool,
) -> Result<(), String> {
    if address.ip().is_loopback() || token || open_to_network {
        return Ok(());
    }
    Err(format!(
        "refusing to serve the dashboard on {address} without a token: anyone who can reach it \
         could read every run's inputs and outputs and replay or purge parked messages. Pass \
         --token (or INQUBO_TOKEN), listen on 127.0.0.1, or, if the network is yours alone, \
         --allow-network-without-token"
    ))
}

fn router(state: State) -> Router {
    let api = Router::new()
        .route("/runs", get(api::runs))
        .route("/runs/{run_id}", get(api::run))
        .route("/runs/{run_id}/cancel", post(api::cancel))
        .route("/runs/{run_id}/resume", post(api::resume))
        .route("/workflows", get(api::workflows))
        .route("/schedules", get(api::schedules))
        .route("/workflows/{workflow}/parked", get(api::parked))
        .route("/workflows/{workflow}/stats", get(api::stats))
        .route("/workflows/{workflow}/parked/replay", post(api::replay))
        .route("/workflows/{workflow}/parked/purge", post(api::purge))
        .route("/events", get(api::events))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .fallback(no_such_endpoint)
        .layer(middleware::from_fn(json_errors));
    Router::new()
        .route("/", get(page))
        .route("/runs/{run_id}", get(page))
        .route("/workflows", get(page))
        .route("/parked", get(page))
        .route("/schedules", get(page))
        .route("/assets/app.js", get(script))
        .route("/assets/app.css", get(style))
        .route("/assets/uplot.js", get(chart_script))
        .route("/assets/uplot.css", get(chart_style))
        .route("/metrics", get(metrics))
        .nest("/api", api)
        .layer(middleware::from_fn_with_state(state.clone(), local_only))
        .with_state(state)
}

/// The largest error text a rejection may carry into a JSON error.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Every error of the API is `{"error": "..."}`: the rejections of axum's extractors (a body
/// that is not JSON, or not of the expected shape, a bad query) come as plain text, and become
/// JSON here. A body of the wrong shape is 400, like every other bad request.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    let body = axum::body::to_bytes(response.into_body(), MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let error = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    (status, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

/// `/api/...` that names no endpoint.
async fn no_such_endpoint(request: Request) -> Response {
    let message = format!(
        "no endpoint {} {}; docs/dashboard.md lists them",
        request.method(),
        request.uri().path()
    );
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// With a token, the API needs it; the pages themselves hold no data.
async fn authorize(Extract(state): Extract<State>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let from_query = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
    let given = from_header.or(from_query).unwrap_or_default();
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({"error": "a valid bearer token is required"})),
        )
            .into_response()
    }
}

/// Compares without stopping at the first difference, so response times do not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Without a token, only this machine is served: requests from a loopback peer, addressed to
/// a local host name (which keeps another web site out through DNS rebinding).
async fn local_only(Extract(state): Extract<State>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    if admits(
        state.token.is_some(),
        state.open_to_network,
        peer,
        request.headers(),
    ) {
        next.run(request).await
    } else {
        (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "error": "this dashboard serves this machine only; start the monitor with --token to serve others"
            })),
        )
            .into_response()
    }
}

/// The access decision of [`local_only`]: with a token, everyone reaches the token check; with
/// the opt-out, everyone is served; otherwise only a loopback peer (a request whose peer is not
/// known is refused) that names a local host.
fn admits(
    token: bool,
    open_to_network: bool,
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
) -> bool {
    if token || open_to_network {
        return true;
    }
    peer.is_some_and(|ip| ip.is_loopback()) && is_local(headers)
}

fn is_local(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok()
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
            ),
        ],
        include_str!("assets/index.html"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/app.css"),
    )
}

/// uPlot, the chart library the workflow page draws with (vendored: assets/vendor/README.md).
async fn chart_script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/vendor/uPlot.iife.min.js"),
    )
}

async fn chart_style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/vendor/uPlot.min.css"),
    )
}

async fn metrics(Extract(state): Extract<State>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, value.parse().unwrap());
        headers
    }

    #[test]
    fn local_host_names_are_recognised() {
        assert!(is_local(&host("127.0.0.1:8080")));
        assert!(is_local(&host("localhost:8080")));
        assert!(is_local(&host("[::1]:8080")));
        assert!(is_local(&host("10.1.2.3")));
        assert!(!is_local(&host("evil.example:8080")));
        assert!(!is_local(&host("localhost.evil.example")));
    }

    #[test]
    fn without_a_token_only_this_machine_is_served() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let local = host("127.0.0.1:8080");
        assert!(admits(false, false, ip("127.0.0.1"), &local));
        assert!(admits(false, false, ip("::1"), &host("localhost:8080")));
        // A peer on the network, whatever host it names.
        for peer in [
            "192.168.1.20",
            "10.0.0.7",
            "172.17.0.1",
            "fe80::1",
            "2001:db8::5",
        ] {
            assert!(!admits(false, false, ip(peer), &local), "{peer}");
            assert!(
                !admits(false, false, ip(peer), &host("10.0.0.1:8080")),
                "{peer}"
            );
        }
        // A loopback peer naming another site (DNS rebinding), or an unknown peer.
        assert!(!admits(
            false,
            false,
            ip("127.0.0.1"),
            &host("evil.example")
        ));
        assert!(!admits(false, false, None, &local));
        // With a token every peer reaches the token check; with the opt-out, everyone.
        assert!(admits(
            true,
            false,
            ip("192.168.1.20"),
            &host("dash.example")
        ));
        assert!(admits(
            false,
            true,
            ip("192.168.1.20"),
            &host("dash.example")
        ));
    }

    #[test]
    fn a_network_address_needs_a_token_or_the_named_opt_out() {
        let any = "0.0.0.0:8080".parse().unwrap();
        let refusal = check_listen(any, false, false).unwrap_err();
        assert!(refusal.contains("--token"), "{refusal}");
        assert!(
            refusal.contains("--allow-network-without-token"),
            "{refusal}"
        );
        assert!(check_listen("192.168.1.4:80".parse().unwrap(), false, false).is_err());
        assert!(check_listen(any, true, false).is_ok());
        assert!(check_listen(any, false, true).is_ok());
        assert!(check_listen("127.0.0.1:0".parse().unwrap(), false, false).is_ok());
        assert!(check_listen("[::1]:0".parse().unwrap(), false, false).is_ok());
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
