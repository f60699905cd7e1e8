//! Test fixtures for Inqubo's live RabbitMQ tests.
//!
//! [`TestBroker`] gives each test a prefix of its own on the real broker, so tests run in
//! parallel without sharing a queue, and deletes everything the test declared when dropped.
//! The broker address comes from `AMQP_ADDR` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

#![allow(clippy::expect_used, clippy::panic)]

use std::{sync::Mutex, time::Duration};

use inqubo_amqp::{Client, QueueType, Runner, RunnerBuilder, Topology};
use inqubo_core::Workflow;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};

/// The broker tests use when `AMQP_ADDR` is unset.
pub const DEFAULT_TEST_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long a test waits for an event before failing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// An isolated corner of the real broker: a unique prefix, cleaned up on drop.
#[derive(Debug)]
pub struct TestBroker {
    url: String,
    prefix: String,
    queue_type: QueueType,
    workflows: Mutex<Vec<Workflow>>,
}

impl TestBroker {
    /// A fresh prefix on the broker at `AMQP_ADDR`, with quorum queues.
    pub fn new() -> Self {
        Self::with_queue_type(QueueType::Quorum)
    }

    /// A fresh prefix with queues of `queue_type`.
    pub fn with_queue_type(queue_type: QueueType) -> Self {
        let url = std::env::var("AMQP_ADDR").unwrap_or_else(|_| DEFAULT_TEST_URL.to_owned());
        let prefix = format!("test-{:016x}", rand::random::<u64>());
        Self {
            url,
            prefix,
            queue_type,
            workflows: Mutex::new(Vec::new()),
        }
    }

    /// The broker address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This test's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This test's topology.
    pub fn topology(&self) -> Topology {
        Topology::new(self.prefix.clone(), self.queue_type).expect("test prefix is valid")
    }

    /// Runner settings for `workflow` under this test's prefix; the workflow's queues are
    /// deleted when the broker fixture is dropped.
    pub fn runner(&self, workflow: &Workflow) -> RunnerBuilder {
        self.workflows
            .lock()
            .expect("workflow list")
            .push(workflow.clone());
        Runner::builder(workflow.clone())
            .url(self.url.clone())
            .prefix(self.prefix.clone())
            .queue_type(self.queue_type)
            .shutdown_timeout(Duration::from_secs(5))
    }

    /// Starts a runner of `workflow` with default settings under this test's prefix.
    pub async fn start_runner(&self, workflow: &Workflow) -> Runner {
        self.runner(workflow)
            .connect()
            .await
            .unwrap_or_else(|e| unreachable_broker(&self.url, e))
    }

    /// A client under this test's prefix.
    pub async fn client(&self) -> Client {
        Client::connect_with(&self.url, self.topology())
            .await
            .unwrap_or_else(|e| unreachable_broker(&self.url, e))
    }

    /// A plain lapin channel, for publishing or reading raw messages.
    pub async fn raw_channel(&self) -> (Connection, Channel) {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| unreachable_broker(&self.url, e));
        let channel = connection.create_channel().await.expect("channel");
        (connection, channel)
    }

    /// Publishes raw bytes with raw properties on this test's exchange.
    pub async fn publish_raw(&self, routing_key: &str, properties: BasicProperties, body: &[u8]) {
        let (connection, channel) = self.raw_channel().await;
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirm mode");
        let confirm = channel
            .basic_publish(
                self.topology().exchange().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "raw publish not confirmed");
        assert!(confirm.take_message().is_none(), "raw publish unroutable");
        let _ = connection.close(200, "done".into()).await;
    }

    /// How many messages `queue` holds ready (not counting deliveries held unacknowledged).
    pub async fn ready_messages(&self, queue: &str) -> u32 {
        let (connection, channel) = self.raw_channel().await;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive queue.declare");
        let _ = connection.close(200, "done".into()).await;
        declared.message_count()
    }

    /// Takes (and acknowledges) every message in `queue`, waiting up to [`EVENT_TIMEOUT`] for
    /// at least `at_least` of them.
    pub async fn drain(&self, queue: &str, at_least: usize) -> Vec<Delivery> {
        let (connection, channel) = self.raw_channel().await;
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        let mut messages = Vec::new();
        loop {
            match channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .expect("basic.get")
            {
                Some(message) => {
                    message
                        .delivery
                        .ack(BasicAckOptions::default())
                        .await
                        .expect("ack");
                    messages.push(message.delivery);
                }
                None if messages.len() >= at_least => break,
                None if tokio::time::Instant::now() > deadline => {
                    panic!("only {} of {at_least} messages in {queue}", messages.len())
                }
                // Polling a queue has no event to wait on; keep the poll gentle.
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let _ = connection.close(200, "done".into()).await;
        messages
    }

    async fn delete_everything(url: String, topology: Topology, workflows: Vec<Workflow>) {
        let Ok(connection) = Connection::connect(&url, ConnectionProperties::default()).await
        else {
            return;
        };
        let Ok(channel) = connection.create_channel().await else {
            return;
        };
        for workflow in &workflows {
            let _ = topology.delete_workflow(&channel, workflow).await;
        }
        // Queues that tools (such as `inqubo monitor`) declare under the prefix.
        let _ = channel
            .queue_delete(topology.monitor_queue().as_str().into(), Default::default())
            .await;
        let _ = topology.delete_shared(&channel).await;
        let _ = connection.close(200, "cleaned".into()).await;
    }
}

impl Default for TestBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let url = self.url.clone();
        let topology = self.topology();
        let workflows =
            std::mem::take(&mut *self.workflows.lock().unwrap_or_else(|e| e.into_inner()));
        // Drop cannot await; clean up on a runtime of our own, off the test's runtime.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(Self::delete_everything(url, topology, workflows));
        });
        let _ = cleanup.join();
    }
}

fn unreachable_broker(url: &str, error: impl std::fmt::Display) -> ! {
    panic!(
        "cannot use RabbitMQ at {url}: {error}\n\
         hint: run `bash .ci/run` (it starts RabbitMQ), or `rabbitmq-server -detached`, \
         or point AMQP_ADDR at a broker"
    )
}

/// The events of a subscription, collected as they arrive.
#[derive(Debug)]
pub struct Events {
    stream: inqubo_amqp::EventStream,
    seen: Vec<inqubo_core::LifecycleEvent>,
}

impl Events {
    /// Subscribes to every event under `client`'s prefix.
    pub async fn subscribe(client: &Client) -> Self {
        Self::subscribe_to(client, None).await
    }

    /// Subscribes to the events of `workflow` only (or of all, for `None`).
    pub async fn subscribe_to(
        client: &Client,
        workflow: Option<&inqubo_core::WorkflowName>,
    ) -> Self {
        let stream = client
            .subscribe(workflow)
            .await
            .expect("subscribe to events");
        Self {
            stream,
            seen: Vec::new(),
        }
    }

    /// Every event seen so far.
    pub fn seen(&self) -> &[inqubo_core::LifecycleEvent] {
        &self.seen
    }

    /// Waits until `done` holds for the events seen so far, failing the test after
    /// [`EVENT_TIMEOUT`] with the events it did see.
    pub async fn until(
        &mut self,
        done: impl Fn(&[inqubo_core::LifecycleEvent]) -> bool,
    ) -> &[inqubo_core::LifecycleEvent] {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(event))) => self.seen.push(event),
                Ok(Some(Err(error))) => panic!("event stream failed: {error}"),
                Ok(None) => panic!("event stream ended; seen: {:#?}", self.seen),
                Err(_) => panic!(
                    "timed out after {EVENT_TIMEOUT:?}; events seen:\n{}",
                    self.seen
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
        &self.seen
    }

    /// Waits for the event `<step>.<kind>` of `run_id` and returns it.
    pub async fn wait_for(
        &mut self,
        run_id: &str,
        step: &str,
        kind: inqubo_core::EventKind,
    ) -> inqubo_core::LifecycleEvent {
        let matches = |e: &inqubo_core::LifecycleEvent| {
            e.run_id.as_str() == run_id
                && e.kind == kind
                && e.step.as_ref().is_some_and(|s| s.as_str() == step)
        };
        let seen = self.until(|events| events.iter().any(matches)).await;
        seen.iter()
            .find(|e| matches(e))
            .cloned()
            .expect("found above")
    }

    /// The events of `run_id`, as `step.kind` strings, in arrival order.
    pub fn trail(&self, run_id: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|e| e.run_id.as_str() == run_id)
            .map(inqubo_core::LifecycleEvent::short_name)
            .collect()
    }
}

/// A TCP proxy in front of the broker whose connections a test can cut, to simulate a lost
/// network or a broker that went away, without touching the broker other tests use.
#[derive(Debug)]
pub struct FlakyProxy {
    address: std::net::SocketAddr,
    cuts: tokio::sync::watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl FlakyProxy {
    /// Listens on a free loopback port and forwards to the broker of `broker`.
    pub async fn start(broker: &TestBroker) -> Self {
        let upstream = host_port(broker.url()).to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("local address");
        let (cuts, _) = tokio::sync::watch::channel(0_u64);
        let cut_signal = cuts.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut cut = cut_signal.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            address,
            cuts,
            accept,
        }
    }

    /// `broker`'s URL, pointing at this proxy instead.
    pub fn url(&self, broker: &TestBroker) -> String {
        broker
            .url()
            .replacen(host_port(broker.url()), &self.address.to_string(), 1)
    }

    /// Drops every connection open through the proxy; new ones are accepted as before.
    pub fn cut(&self) {
        self.cuts.send_modify(|generation| *generation += 1);
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The `host:port` of an AMQP URL.
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// `GET /metrics` from a Prometheus endpoint on `addr`, over a plain socket.
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the metrics endpoint answers");
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("request sent");
    let mut response = String::new();
    socket
        .read_to_string(&mut response)
        .await
        .expect("response read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the sample whose line starts with `series` in Prometheus text, if any.
pub fn metric_sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// A free TCP port on 127.0.0.1 (free when asked; a test binds it soon after).
pub fn free_local_addr() -> std::net::SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    probe.local_addr().expect("its address")
}

/// The run id `id`, for tests: `runner.trigger(run_id("r1"), &input)`. Panics if `id` is not
/// a valid run id.
pub fn run_id(id: impl Into<String>) -> inqubo_core::RunId {
    inqubo_core::RunId::new(id).expect("a valid run id")
}

/// A RabbitMQ node of a test's own beside the default one (`scripts/rabbitmq-node.sh`): its
/// own node name, port, data and logs, so that a test may alarm or restart it without
/// touching the broker other tests use. Stopped, and its folder removed, on drop.
#[derive(Debug)]
pub struct PrivateNode {
    name: String,
    port: u16,
    dir: std::path::PathBuf,
    script: std::path::PathBuf,
}

impl PrivateNode {
    /// Starts node `name` on 127.0.0.1:`port` (and `port` + 20000 for Erlang distribution).
    pub fn start(name: &str, port: u16) -> Self {
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../scripts/rabbitmq-node.sh");
        let dir = std::env::temp_dir()
            .join(format!("inqubo-test-node-{}", std::process::id()))
            .join(name);
        let node = Self {
            name: name.to_owned(),
            port,
            dir,
            script,
        };
        let status = std::process::Command::new("bash")
            .arg(&node.script)
            .args(["start", name, &port.to_string()])
            .arg(&node.dir)
            .status()
            .expect("run scripts/rabbitmq-node.sh");
        assert!(status.success(), "private node {name} did not start");
        node
    }

    /// The node's AMQP URL.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Runs `rabbitmqctl` against the node; its standard output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("bash")
            .arg(&self.script)
            .args(["ctl", &self.name])
            .arg(&self.dir)
            .arg("--")
            .args(args)
            .output()
            .expect("run rabbitmqctl");
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(&self.script)
            .args(["stop", &self.name])
            .arg(&self.dir)
            .status();
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}
