//! With OpenTelemetry on, a run is one trace: the span that triggers it is the parent of the
//! first step's span, which is the parent of the next step's, across the broker. One test in
//! its own binary: the tracing subscriber is process-wide.

use std::time::Duration;

use inqubo::{EventKind, Step, StepContext, StepError, Workflow};
use inqubo_testkit::{Events, TestBroker, run_id};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value, trace::v1::Span,
};
use prost::Message;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    sync::mpsc,
};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

async fn double(n: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(n * 2)
}

/// A stand-in OTLP/HTTP collector: answers every request with 200 and hands over the bodies.
async fn collector() -> (String, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (bodies, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let mut socket = BufReader::new(socket);
                loop {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if socket.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    socket.read_exact(&mut body).await.unwrap();
                    let _ = bodies.send(body);
                    socket
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await
                        .unwrap();
                }
            });
        }
    });
    (url, received)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_is_one_trace_from_trigger_through_every_step() {
    let (url, mut bodies) = collector().await;
    let otel = inqubo_amqp::otel::init_otlp("inqubo-otel-test", &url).unwrap();
    let broker = TestBroker::new();
    let flow = Workflow::builder("traced")
        .start(Step::new("double", double))
        .then(Step::new("check", double))
        .build()
        .unwrap();
    let runner = broker.start_runner(&flow).await;
    let mut events = Events::subscribe_to(runner.client(), Some(runner.workflow().name())).await;

    let checkout = tracing::info_span!(target: "inqubo::test", "checkout");
    let (trace_id, checkout_id) = {
        let context = checkout.context();
        let span = context.span();
        let ids = span.span_context();
        (
            ids.trace_id().to_bytes().to_vec(),
            ids.span_id().to_bytes().to_vec(),
        )
    };
    runner
        .client()
        .trigger(flow.name(), run_id("run-1"), &2_u64)
        .instrument(checkout.clone())
        .await
        .unwrap();
    drop(checkout);
    events
        .wait_for("run-1", "check", EventKind::Succeeded)
        .await;
    runner.shutdown().await.unwrap();
    tokio::task::spawn_blocking(move || drop(otel))
        .await
        .unwrap();

    let mut spans = Vec::new();
    while let Ok(Some(body)) = tokio::time::timeout(Duration::from_secs(2), bodies.recv()).await {
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| format!("{:?}", a.value));
            assert!(service.unwrap_or_default().contains("inqubo-otel-test"));
            spans.extend(resource.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
    let find = |step: &str| {
        spans
            .iter()
            // An attempt's span; a trigger also passes through the first step's queue once
            // before its run is admitted, in a step span without an attempt.
            .find(|s| {
                s.name == "step"
                    && attribute(s, "step").as_deref() == Some(step)
                    && attribute(s, "attempt").is_some()
            })
            .unwrap_or_else(|| panic!("no span of step {step} among {spans:#?}"))
    };
    let (first, second) = (find("double"), find("check"));
    assert_eq!(
        first.trace_id, trace_id,
        "the first step joins the caller's trace"
    );
    assert_eq!(
        second.trace_id, trace_id,
        "so does the next one, across the broker"
    );
    let trigger = spans
        .iter()
        .find(|s| s.span_id == first.parent_span_id)
        .expect("the first step's parent is exported");
    assert!(trigger.name.starts_with("trigger"), "{}", trigger.name);
    assert_eq!(
        trigger.parent_span_id, checkout_id,
        "the trigger runs in the caller's span"
    );
    assert_eq!(second.parent_span_id, first.span_id);
    assert_eq!(attribute(first, "run_id").as_deref(), Some("run-1"));
    assert!(
        spans
            .iter()
            .any(|s| s.name == "checkout" && s.span_id == checkout_id)
    );
}
