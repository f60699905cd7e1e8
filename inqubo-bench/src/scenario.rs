//! The workflows the benchmark runs on Inqubo, and how each scenario drives them: runs queued
//! before a runner starts, runs triggered live, one run at a time, runner processes.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use inqubo::{
    EventKind, QueueType, RunId, Runner, Step, StepContext, StepError, Topology, Workflow,
    protocol::{
        self, RoutingKey, header,
        wire::{self, Wire},
    },
};
use lapin::{
    Channel, Connection,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::{Cli, Measure};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Payload {
    id: u64,
    pad: String,
}

pub(crate) fn payload() -> Vec<u8> {
    let mut body = serde_json::to_vec(&Payload {
        id: 1,
        pad: String::new(),
    })
    .unwrap_or_default();
    let pad = "x".repeat(200 - body.len());
    body = serde_json::to_vec(&Payload { id: 1, pad }).unwrap_or_default();
    body
}

pub(crate) async fn relay(p: Payload, _ctx: StepContext) -> Result<Payload, StepError> {
    Ok(p)
}

pub(crate) fn hop_workflow() -> Workflow {
    hop_workflow_with(true)
}

/// The one-step workflow without unique runs: triggers go straight to the step, without
/// the admission hop through the run join.
pub(crate) fn hop_workflow_not_unique() -> Workflow {
    hop_workflow_with(false)
}

fn hop_workflow_with(unique_runs: bool) -> Workflow {
    Workflow::builder("hop")
        .unique_runs(unique_runs)
        .start(Step::new("s0", relay))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn chain_workflow() -> Workflow {
    let step = |i: usize| Step::new(format!("s{i}"), relay);
    Workflow::builder("chain")
        .start(step(0))
        .then(step(1))
        .then(step(2))
        .then(step(3))
        .then(step(4))
        .then(step(5))
        .then(step(6))
        .then(step(7))
        .then(step(8))
        .then(step(9))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn fanout_workflow() -> Workflow {
    let step = |i: usize| Step::new(format!("s{i}"), relay);
    Workflow::builder("fanout")
        .start(step(0))
        .then((
            step(1),
            step(2),
            step(3),
            step(4),
            step(5),
            step(6),
            step(7),
            step(8),
        ))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A workflow's topology under a fresh prefix, and a queue counting its `run.succeeded`.
pub(crate) struct Prepared {
    connection: Connection,
    channel: Channel,
    topology: Topology,
    workflow: Workflow,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
}

impl Prepared {
    pub(crate) async fn new(
        url: &str,
        queue_type: QueueType,
        workflow: Workflow,
    ) -> anyhow::Result<Self> {
        let prefix = format!("bench-{:08x}", rand::random::<u32>());
        let topology = Topology::new(prefix, queue_type)?;
        let connection = Connection::connect(url, Default::default()).await?;
        let channel = connection.create_channel().await?;
        topology.declare_shared(&channel).await?;
        topology
            .declare_workflow(&channel, &workflow, inqubo::protocol::JOIN_SHARDS)
            .await?;
        let counter = connection.create_channel().await?;
        let queue = counter
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        counter
            .queue_bind(
                queue.name().clone(),
                topology.exchange().into(),
                RoutingKey::run_event(workflow.name(), EventKind::RunSucceeded)
                    .as_str()
                    .into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = counter
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let (sender, arrivals) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let run = wire::headers(delivery.properties.headers().as_ref())
                    .text(header::RUN_ID)
                    .unwrap_or_default()
                    .to_owned();
                let _ = sender.send((run, Instant::now()));
            }
            let _counter = counter;
        });
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection,
            channel,
            topology,
            workflow,
            arrivals,
        })
    }

    /// Publishes `count` triggers, returning when confirmed, with each run's trigger time.
    pub(crate) async fn trigger(
        &self,
        count: usize,
        first: usize,
    ) -> anyhow::Result<HashMap<String, Instant>> {
        self.trigger_with(count, first, payload()).await
    }

    /// Like [`Prepared::trigger`], with `body` as every run's input.
    pub(crate) async fn trigger_with(
        &self,
        count: usize,
        first: usize,
        body: Vec<u8>,
    ) -> anyhow::Result<HashMap<String, Instant>> {
        let mut sent = HashMap::with_capacity(count);
        let mut pending = Vec::with_capacity(1000);
        for i in first..first + count {
            let run = RunId::new(format!("r{i}"))?;
            let trigger = protocol::trigger(self.workflow.name(), &run, body.clone());
            let out = Wire::new(&self.topology, trigger, None);
            sent.insert(run.to_string(), Instant::now());
            pending.push(
                self.channel
                    .basic_publish(
                        out.exchange.as_str().into(),
                        out.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: out.mandatory,
                            ..Default::default()
                        },
                        &out.body,
                        out.properties,
                    )
                    .await?,
            );
            if pending.len() == 1000 {
                for confirm in pending.drain(..) {
                    confirm.await?;
                }
            }
        }
        for confirm in pending {
            confirm.await?;
        }
        Ok(sent)
    }

    /// Waits for `count` runs to end; returns when the last ended, and every run's end.
    pub(crate) async fn wait(
        &mut self,
        count: usize,
    ) -> anyhow::Result<(Instant, HashMap<String, Instant>)> {
        let mut ends = HashMap::with_capacity(count);
        let mut last = Instant::now();
        while ends.len() < count {
            let Some((run, at)) =
                tokio::time::timeout(Duration::from_secs(120), self.arrivals.recv()).await?
            else {
                anyhow::bail!("run counter stopped");
            };
            last = at;
            ends.insert(run, at);
        }
        Ok((last, ends))
    }

    pub(crate) fn runner(&self, prefetch: u16) -> inqubo::RunnerBuilder {
        Runner::builder(self.workflow.clone())
            .prefix(self.topology.prefix())
            .queue_type(self.topology.queue_type())
            .prefetch(prefetch)
            .max_in_flight(usize::from(prefetch) * 2)
    }

    pub(crate) async fn cleanup(self) {
        let _ = self
            .topology
            .delete_workflow(&self.channel, &self.workflow)
            .await;
        let _ = self.topology.delete_shared(&self.channel).await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Runs queued before the runner starts, one runner: steps per second.
pub(crate) async fn queued(
    cli: &Cli,
    queue_type: QueueType,
    workflow: Workflow,
    runs: usize,
) -> anyhow::Result<Measure> {
    queued_with(cli, queue_type, workflow, runs, true).await
}

/// Like [`queued`], choosing whether attempts publish `started`.
pub(crate) async fn queued_with(
    cli: &Cli,
    queue_type: QueueType,
    workflow: Workflow,
    runs: usize,
    publish_started: bool,
) -> anyhow::Result<Measure> {
    let steps = workflow.steps().len();
    let mut prepared = Prepared::new(&cli.url, queue_type, workflow).await?;
    prepared.trigger(runs, 0).await?;
    let start = Instant::now();
    let runner = prepared
        .runner(cli.prefetch)
        .url(&cli.url)
        .publish_started(publish_started)
        .connect()
        .await?;
    let (last, _) = prepared.wait(runs).await?;
    runner.shutdown().await?;
    prepared.cleanup().await;
    Ok(Measure::throughput(runs * steps, last - start))
}

/// Runs triggered while the runner is up: steps per second, and run latency.
pub(crate) async fn live(
    cli: &Cli,
    queue_type: QueueType,
    workflow: Workflow,
    runs: usize,
) -> anyhow::Result<Measure> {
    let steps = workflow.steps().len();
    let mut prepared = Prepared::new(&cli.url, queue_type, workflow).await?;
    let runner = prepared
        .runner(cli.prefetch)
        .url(&cli.url)
        .connect()
        .await?;
    let start = Instant::now();
    let sent = prepared.trigger(runs, 0).await?;
    let (last, ends) = prepared.wait(runs).await?;
    runner.shutdown().await?;
    prepared.cleanup().await;
    let latencies = ends
        .iter()
        .filter_map(|(run, end)| Some(*end - *sent.get(run)?))
        .collect();
    let mut measure = Measure::latency(latencies);
    measure.rate = Some((runs * steps) as f64 / (last - start).as_secs_f64());
    Ok(measure)
}

/// One run at a time through the chain: per-hop latency.
pub(crate) async fn one_at_a_time(
    cli: &Cli,
    queue_type: QueueType,
    runs: usize,
) -> anyhow::Result<Measure> {
    let workflow = chain_workflow();
    let hops = workflow.steps().len() as u32;
    let mut prepared = Prepared::new(&cli.url, queue_type, workflow).await?;
    let runner = prepared
        .runner(cli.prefetch)
        .url(&cli.url)
        .connect()
        .await?;
    let mut per_hop = Vec::with_capacity(runs);
    for i in 0..runs {
        let sent = prepared.trigger(1, i).await?;
        let (_, ends) = prepared.wait(1).await?;
        for (run, end) in ends {
            if let Some(start) = sent.get(&run) {
                per_hop.push((end - *start) / hops);
            }
        }
    }
    runner.shutdown().await?;
    prepared.cleanup().await;
    Ok(Measure::latency(per_hop))
}

/// Peak resident memory (kB) and CPU time of a process, from /proc.
pub(crate) fn process_stats(pid: u32) -> Option<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((peak_kb, Duration::from_millis(ticks * 10)))
}

/// Runs queued, then `processes` runner processes: steps per second, and the peak RSS and CPU
/// time per step of the processes.
pub(crate) async fn processes(
    cli: &Cli,
    queue_type: QueueType,
    count: usize,
    runs: usize,
) -> anyhow::Result<(Measure, u64, Duration)> {
    let mut prepared = Prepared::new(&cli.url, queue_type, hop_workflow()).await?;
    prepared.trigger(runs, 0).await?;
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let mut children = Vec::new();
    for _ in 0..count {
        let mut command = Command::new(&exe);
        command
            .args([
                "--url",
                &cli.url,
                "--prefetch",
                &cli.prefetch.to_string(),
                "runner",
                "--prefix",
                prepared.topology.prefix(),
            ])
            .kill_on_drop(true);
        if queue_type == QueueType::Classic {
            command.arg("--classic");
        }
        children.push(command.spawn()?);
    }
    let (last, _) = prepared.wait(runs).await?;
    let elapsed = last - start;
    let mut peak = 0;
    let mut cpu = Duration::ZERO;
    for child in &mut children {
        if let Some((kb, time)) = child.id().and_then(process_stats) {
            peak = peak.max(kb);
            cpu += time;
        }
        let _ = child.kill().await;
    }
    prepared.cleanup().await;
    Ok((
        Measure::throughput(runs, elapsed),
        peak,
        cpu / runs.max(1) as u32,
    ))
}
