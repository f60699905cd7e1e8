//! The JSON API under `/api`, which the pages use and scripts may too. Documented in
//! `docs/dashboard.md`.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    extract::{Path, Query, State as Extract},
    http::StatusCode,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::{Stream, StreamExt};
use inqubo::{RunId, WorkflowName};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use super::State;
use crate::{
    control,
    history::query::{self, RunFilter},
    parked::{self, Selection},
    workflows::queues_stats,
};

/// An error the API answers with: a status and `{"error": "..."}`.
pub(super) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        Self(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"))
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// `?workflow=&status=&q=&page=&per_page=`
#[derive(Debug, Deserialize)]
pub(super) struct RunsQuery {
    #[serde(flatten)]
    filter: RunFilter,
    #[serde(default = "first_page")]
    page: u32,
    #[serde(default = "default_per_page")]
    per_page: u32,
}

fn first_page() -> u32 {
    1
}

fn default_per_page() -> u32 {
    50
}

/// `GET /api/runs`: a page of runs, newest first, with counts per status.
pub(super) async fn runs(Extract(state): Extract<State>, Query(q): Query<RunsQuery>) -> ApiResult {
    if !q.filter.status.is_empty() && !query::RUN_STATUSES.contains(&q.filter.status.as_str()) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown status `{}`; use one of {}",
                q.filter.status,
                query::RUN_STATUSES.join(", ")
            ),
        ));
    }
    Ok(Json(
        query::list_runs(&state.pool, &q.filter, q.page, q.per_page).await?,
    ))
}

/// `GET /api/runs/{run_id}`: one run with its attempts and its workflow's graph.
pub(super) async fn run(Extract(state): Extract<State>, Path(run_id): Path<String>) -> ApiResult {
    match query::run_detail(&state.pool, &run_id).await? {
        Some(run) => Ok(Json(run)),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("run {run_id} is not in the history"),
        )),
    }
}

/// `?window=1h` (the default) or `1d`.
#[derive(Debug, Deserialize)]
pub(super) struct StatsQuery {
    #[serde(default = "last_hour")]
    window: String,
}

fn last_hour() -> String {
    "1h".to_owned()
}

/// `GET /api/workflows/{workflow}/stats?window=1h|1d`: what the workflow's charts show, from
/// the history: runs started, finished and failed per bucket (a minute over an hour, 15
/// minutes over a day), the failure rate, and each step's duration percentiles.
pub(super) async fn stats(
    Extract(state): Extract<State>,
    Path(workflow): Path<String>,
    Query(q): Query<StatsQuery>,
) -> ApiResult {
    let Some((_, window_ms, bucket_ms)) = query::CHART_WINDOWS
        .iter()
        .find(|(name, _, _)| *name == q.window)
    else {
        let known: Vec<&str> = query::CHART_WINDOWS.iter().map(|w| w.0).collect();
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("window must be one of {}", known.join(", ")),
        ));
    };
    let stats = query::workflow_stats(&state.pool, &workflow, *window_ms, *bucket_ms).await?;
    Ok(Json(stats))
}

/// `GET /api/workflows`: each workflow's graph, per-step activity over the last hour, queue
/// depths and parked counts.
pub(super) async fn workflows(Extract(state): Extract<State>) -> ApiResult {
    const HOUR_MS: i64 = 3_600_000;
    let mut report = query::workflow_activity(&state.pool, HOUR_MS).await?;
    let topology = state.context.topology()?;
    // The queues to ask RabbitMQ about: (workflow index, step index or `None` for the parked
    // queue, queue name).
    let mut wanted = Vec::new();
    for (w, workflow) in report["workflows"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Ok(name) = workflow["workflow"]
            .as_str()
            .unwrap_or_default()
            .parse::<inqubo::WorkflowName>()
        else {
            continue;
        };
        wanted.push((w, None, topology.parked_queue(&name).as_str().to_owned()));
        for (s, step) in workflow["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Ok(step) = step["step"].as_str().unwrap_or_default().parse() {
                let queue = topology.step_queue(&name, &step);
                wanted.push((w, Some(s), queue.as_str().to_owned()));
            }
        }
    }
    let names: Vec<&str> = wanted.iter().map(|(_, _, queue)| queue.as_str()).collect();
    let stats = queues_stats(&state.context, &names).await?;
    for ((w, s, queue), stat) in wanted.iter().zip(stats) {
        let workflow = &mut report["workflows"][*w];
        match s {
            None => workflow["parked"] = json!(stat.map(|(depth, _)| depth)),
            Some(s) => {
                let step = &mut workflow["steps"][*s];
                step["queue"] = json!(queue);
                step["depth"] = json!(stat.map(|(depth, _)| depth));
                step["consumers"] = json!(stat.map(|(_, consumers)| consumers));
            }
        }
    }
    Ok(Json(report))
}

/// `GET /api/schedules`: every workflow's schedules (in its runners' code, and stored with
/// `inqubo schedule add`), each with its next fire times and its last runs in the history.
pub(super) async fn schedules(Extract(state): Extract<State>) -> ApiResult {
    let mut workflows = crate::schedule::all(&state.context, None).await?;
    for workflow in &mut workflows {
        let name = workflow["workflow"].as_str().unwrap_or_default().to_owned();
        for schedule in workflow["schedules"].as_array_mut().into_iter().flatten() {
            let prefix = format!("{}@", schedule["name"].as_str().unwrap_or_default());
            let last = query::runs_starting_with(&state.pool, &name, &prefix, 5).await?;
            schedule["last_runs"] = last;
        }
    }
    Ok(Json(json!({ "workflows": workflows })))
}

/// `GET /api/workflows/{workflow}/parked`: parked messages with their reasons.
pub(super) async fn parked(
    Extract(state): Extract<State>,
    Path(workflow): Path<String>,
) -> ApiResult {
    let messages = parked::list(&state.context, &workflow, false)
        .await
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, format!("{e:#}")))?;
    Ok(Json(json!({"workflow": workflow, "messages": messages})))
}

/// The body of a replay: the message with `message_id`, the inputs of run `run_id` (only
/// the one of `step`, if given), or all of them (`all: true`). Never a position: positions
/// shift as messages come and go.
#[derive(Debug, Deserialize)]
pub(super) struct ReplayRequest {
    message_id: Option<String>,
    run_id: Option<String>,
    step: Option<String>,
    #[serde(default)]
    all: bool,
    number: Option<usize>,
}

/// `POST /api/workflows/{workflow}/parked/replay`
pub(super) async fn replay(
    Extract(state): Extract<State>,
    Path(workflow): Path<String>,
    Json(request): Json<ReplayRequest>,
) -> ApiResult {
    let selection = match request {
        ReplayRequest {
            number: Some(_), ..
        } => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "parked messages are addressed by message_id, or run_id and step, not by position (positions shift as messages come and go)".to_owned(),
            ));
        }
        ReplayRequest {
            message_id: Some(id),
            run_id: None,
            step: None,
            all: false,
            ..
        } => Selection::Message(id),
        ReplayRequest {
            message_id: None,
            run_id: Some(run_id),
            step,
            all: false,
            ..
        } => Selection::Run { run_id, step },
        ReplayRequest {
            message_id: None,
            run_id: None,
            step: None,
            all: true,
            ..
        } => Selection::All,
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "give one of {\"message_id\": \"...\"}, {\"run_id\": \"...\", \"step\": \"...\"} (step optional) or {\"all\": true}".to_owned(),
            ));
        }
    };
    let done = parked::replay(&state.context, &workflow, selection, false)
        .await
        .map_err(|e| {
            let status = if e.is::<parked::NoMatch>() {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::CONFLICT
            };
            ApiError(status, format!("{e:#}"))
        })?;
    if done.replayed == 0 {
        let why: Vec<&str> = done.kept.iter().filter_map(|k| k["why"].as_str()).collect();
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("nothing was replayed: {}", why.join("; ")),
        ));
    }
    Ok(Json(done.to_json()))
}

/// The body of a cancel: the run's workflow (looked up in the history if absent) and why.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct CancelRequest {
    workflow: Option<String>,
    reason: Option<String>,
}

/// How long the dashboard waits for a runner to answer a cancel.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /api/runs/{run_id}/cancel`: 200 once cancelled; 409 if the run had already ended;
/// 504 if no runner answered (the request stays queued).
pub(super) async fn cancel(
    Extract(state): Extract<State>,
    Path(run_id): Path<String>,
    Json(request): Json<CancelRequest>,
) -> ApiResult {
    let (run_id, workflow) = place(
        &state,
        &run_id,
        request.workflow.as_deref(),
        control::Purpose::Cancel,
    )
    .await?;
    let reason = request
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "cancelled from the dashboard".to_owned());
    match control::cancel(&state.context, &workflow, &run_id, &reason, CANCEL_TIMEOUT).await? {
        control::Cancelled::Done => Ok(Json(json!({
            "run_id": run_id, "workflow": workflow, "cancelled": true, "reason": reason,
        }))),
        control::Cancelled::Refused { ended } => Err(ApiError(
            StatusCode::CONFLICT,
            format!("run {run_id} {}; nothing changed", control::already(&ended)),
        )),
        control::Cancelled::Unanswered { message } => {
            Err(ApiError(StatusCode::GATEWAY_TIMEOUT, message))
        }
    }
}

/// The body of a resume: the run's workflow (looked up in the history if absent).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ResumeRequest {
    workflow: Option<String>,
}

/// `POST /api/runs/{run_id}/resume`: 200 with the new generation and how many inputs went
/// back; 404 if the run has nothing parked.
pub(super) async fn resume(
    Extract(state): Extract<State>,
    Path(run_id): Path<String>,
    Json(request): Json<ResumeRequest>,
) -> ApiResult {
    let (run_id, workflow) = place(
        &state,
        &run_id,
        request.workflow.as_deref(),
        control::Purpose::Resume,
    )
    .await?;
    let client = state.context.client().await?;
    match client.resume(&workflow, &run_id).await {
        Ok(resumed) => Ok(Json(json!({
            "run_id": run_id, "workflow": workflow,
            "generation": resumed.generation, "inputs": resumed.inputs,
        }))),
        Err(error @ inqubo::Error::NothingToResume { .. }) => {
            Err(ApiError(StatusCode::NOT_FOUND, error.to_string()))
        }
        Err(error) => Err(anyhow::Error::from(error).into()),
    }
}

/// The run id and workflow a request names; the workflow looked up in the history (then
/// among announced workflows) when the body has none.
async fn place(
    state: &State,
    run_id: &str,
    workflow: Option<&str>,
    purpose: control::Purpose,
) -> Result<(RunId, WorkflowName), ApiError> {
    let bad = |e: inqubo::NameError| ApiError(StatusCode::BAD_REQUEST, e.to_string());
    let run_id: RunId = run_id.parse().map_err(bad)?;
    let workflow = workflow
        .filter(|w| !w.is_empty())
        .map(str::parse::<WorkflowName>)
        .transpose()
        .map_err(bad)?;
    let workflow = control::workflow_of(
        &state.context,
        &run_id,
        workflow,
        Some(&state.pool),
        purpose,
        "\"workflow\" in the request",
    )
    .await
    .map_err(|e| {
        if e.is::<control::UnknownWorkflow>() {
            ApiError(StatusCode::NOT_FOUND, format!("{e:#}"))
        } else {
            ApiError::from(e)
        }
    })?;
    Ok((run_id, workflow))
}

/// The body of a purge: `{"all": true}`, so that it is explicit.
#[derive(Debug, Deserialize)]
pub(super) struct PurgeRequest {
    all: bool,
}

/// `POST /api/workflows/{workflow}/parked/purge`
pub(super) async fn purge(
    Extract(state): Extract<State>,
    Path(workflow): Path<String>,
    Json(request): Json<PurgeRequest>,
) -> ApiResult {
    if !request.all {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "a purge deletes every parked message; send {\"all\": true}".to_owned(),
        ));
    }
    let purged = parked::purge(&state.context, &workflow)
        .await
        .map_err(|e| ApiError(StatusCode::CONFLICT, format!("{e:#}")))?;
    Ok(Json(json!({"purged": purged})))
}

/// `GET /api/events`: the events the monitor records, as Server-Sent Events (`event:
/// lifecycle`); `event: lagged` says some were skipped because the client read too slowly.
pub(super) async fn events(
    Extract(state): Extract<State>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = BroadcastStream::new(state.live.subscribe()).map(|item| {
        Ok(match item {
            Ok(json) => Event::default().event("lifecycle").data(&*json),
            Err(BroadcastStreamRecvError::Lagged(skipped)) => {
                Event::default().event("lagged").data(skipped.to_string())
            }
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
