//! Inqubo's benchmark: workflow steps on RabbitMQ, next to a raw lapin relay measured in the
//! same run on the same broker, since this kind of machine is noisy.
//!
//! ```text
//! cargo run --release -p inqubo-bench -- [--quick]
//! ```
//!
//! Scenarios, each on quorum and classic queues: `hop` (a one-step workflow, runs queued, one
//! runner), `chain` (10 steps), `fanout` (one step to 8), `latency` (one run at a time through
//! the chain), `scale` (1 and 2 runner processes, with the runner's peak RSS and CPU time per
//! step). The last lines are `hop throughput ratio inqubo/raw (<queue type>): <ratio>`.

#![allow(clippy::print_stdout)]

mod raw;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
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

#[derive(Debug, Parser)]
#[command(about = "Benchmark Inqubo against a raw lapin relay on the same broker")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// A smaller run that finishes in under a minute.
    #[arg(long)]
    quick: bool,
    /// The broker.
    #[arg(long, env = "AMQP_URL", default_value = inqubo::DEFAULT_AMQP_URL)]
    url: String,
    /// Only this scenario (hop, chain, fanout, latency, scale).
    #[arg(long)]
    only: Option<String>,
    /// Prefetch of runners and of the raw relay.
    #[arg(long, default_value_t = 100)]
    prefetch: u16,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// A runner of the one-step workflow, until killed (started by the `scale` scenario).
    Runner {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        classic: bool,
    },
}

/// A result: a rate, latency percentiles, or both.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measure {
    rate: Option<f64>,
    p50: Option<Duration>,
    p99: Option<Duration>,
}

impl Measure {
    pub(crate) fn throughput(count: usize, elapsed: Duration) -> Self {
        Self {
            rate: Some(count as f64 / elapsed.as_secs_f64()),
            ..Self::default()
        }
    }

    pub(crate) fn latency(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let pick = |q: f64| {
            samples
                .get(((samples.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        Self {
            rate: None,
            p50: pick(0.5),
            p99: pick(0.99),
        }
    }

    fn show(&self) -> String {
        let mut parts = Vec::new();
        if let Some(rate) = self.rate {
            parts.push(format!("{rate:>8.0}/s"));
        }
        if let (Some(p50), Some(p99)) = (self.p50, self.p99) {
            parts.push(format!("p50 {:.2} ms p99 {:.2} ms", ms(p50), ms(p99)));
        }
        parts.join("  ")
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The step input and output: about 200 bytes of JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    id: u64,
    pad: String,
}

fn payload() -> Vec<u8> {
    let mut body = serde_json::to_vec(&Payload {
        id: 1,
        pad: String::new(),
    })
    .unwrap_or_default();
    let pad = "x".repeat(200 - body.len());
    body = serde_json::to_vec(&Payload { id: 1, pad }).unwrap_or_default();
    body
}

async fn relay(p: Payload, _ctx: StepContext) -> Result<Payload, StepError> {
    Ok(p)
}

fn hop_workflow() -> Workflow {
    Workflow::builder("hop")
        .start(Step::new("s0", relay))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn chain_workflow() -> Workflow {
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

fn fanout_workflow() -> Workflow {
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
struct Prepared {
    connection: Connection,
    channel: Channel,
    topology: Topology,
    workflow: Workflow,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
}

impl Prepared {
    async fn new(url: &str, queue_type: QueueType, workflow: Workflow) -> anyhow::Result<Self> {
        let prefix = format!("bench-{:08x}", rand::random::<u32>());
        let topology = Topology::new(prefix, queue_type)?;
        let connection = Connection::connect(url, Default::default()).await?;
        let channel = connection.create_channel().await?;
        topology.declare_shared(&channel).await?;
        topology.declare_workflow(&channel, &workflow).await?;
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
    async fn trigger(
        &self,
        count: usize,
        first: usize,
    ) -> anyhow::Result<HashMap<String, Instant>> {
        let body = payload();
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
    async fn wait(&mut self, count: usize) -> anyhow::Result<(Instant, HashMap<String, Instant>)> {
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

    fn runner(&self, prefetch: u16) -> inqubo::RunnerBuilder {
        Runner::builder(self.workflow.clone())
            .prefix(self.topology.prefix())
            .queue_type(self.topology.queue_type())
            .prefetch(prefetch)
            .max_in_flight(usize::from(prefetch) * 2)
    }

    async fn cleanup(self) {
        let _ = self
            .topology
            .delete_workflow(&self.channel, &self.workflow)
            .await;
        let _ = self.topology.delete_shared(&self.channel).await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Runs queued before the runner starts, one runner: steps per second.
async fn queued(
    cli: &Cli,
    queue_type: QueueType,
    workflow: Workflow,
    runs: usize,
) -> anyhow::Result<Measure> {
    queued_with(cli, queue_type, workflow, runs, true).await
}

/// Like [`queued`], choosing whether attempts publish `started`.
async fn queued_with(
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
async fn live(
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
async fn one_at_a_time(cli: &Cli, queue_type: QueueType, runs: usize) -> anyhow::Result<Measure> {
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
fn process_stats(pid: u32) -> Option<(u64, Duration)> {
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
async fn processes(
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

fn median(mut values: Vec<Measure>) -> Measure {
    values.sort_by(|a, b| {
        a.rate
            .partial_cmp(&b.rate)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    values.get(values.len() / 2).cloned().unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("inqubo=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(Mode::Runner { prefix, classic }) = &cli.mode {
        let queue_type = if *classic {
            QueueType::Classic
        } else {
            QueueType::Quorum
        };
        let runner = Runner::builder(hop_workflow())
            .url(&cli.url)
            .prefix(prefix)
            .queue_type(queue_type)
            .prefetch(cli.prefetch)
            .max_in_flight(usize::from(cli.prefetch) * 2)
            .connect()
            .await?;
        runner.run(std::future::pending()).await?;
        return Ok(());
    }
    let (hop_runs, chain_runs, fanout_runs, latency_runs, scale_runs, repeat) = if cli.quick {
        (2_000, 200, 200, 30, 2_000, 1)
    } else {
        (20_000, 2_000, 2_000, 300, 10_000, 3)
    };
    let body = payload();
    let mut ratios = Vec::new();
    println!(
        "inqubo-bench: {} runs per hop measurement, prefetch {}, {}-byte JSON, {} repeat(s)",
        hop_runs,
        cli.prefetch,
        body.len(),
        repeat
    );
    let header = ["queues", "scenario", "inqubo", "raw lapin relay"];
    println!(
        "{:<8} {:<34} {:<34} {}",
        header[0], header[1], header[2], header[3]
    );
    for queue_type in [QueueType::Quorum, QueueType::Classic] {
        let name = if queue_type == QueueType::Quorum {
            "quorum"
        } else {
            "classic"
        };
        // Interleave raw and inqubo measurements, and take medians.
        let mut raw_hops = Vec::new();
        let mut inqubo_hops = Vec::new();
        for _ in 0..repeat {
            raw_hops.push(raw::hop(&cli.url, queue_type, cli.prefetch, &body, hop_runs).await?);
            inqubo_hops.push(queued(&cli, queue_type, hop_workflow(), hop_runs).await?);
        }
        let (raw_hop, inqubo_hop) = (median(raw_hops), median(inqubo_hops));
        let quiet_hop = queued_with(&cli, queue_type, hop_workflow(), hop_runs, false).await?;
        println!(
            "{name:<8} {:<34} {:<34} {}",
            "hop (steps/s, runs queued)",
            inqubo_hop.show(),
            raw_hop.show()
        );
        println!(
            "{name:<8} {:<34} {:<34}",
            "hop without started events",
            quiet_hop.show()
        );
        if let (Some(ours), Some(theirs)) = (quiet_hop.rate, raw_hop.rate) {
            println!(
                "{name:<8} hop ratio without started events: {:.2}",
                ours / theirs
            );
        }
        let chain = live(&cli, queue_type, chain_workflow(), chain_runs).await?;
        println!(
            "{name:<8} {:<34} {:<34}",
            "chain of 10 (steps/s, run latency)",
            chain.show()
        );
        if cli.only.as_deref() == Some("fanout") {
            let fanout = queued(&cli, queue_type, fanout_workflow(), fanout_runs).await?;
            println!(
                "{name:<8} {:<34} {:<34}",
                "fanout 1 to 8 (steps/s)",
                fanout.show()
            );
            continue;
        }
        let fanout = queued(&cli, queue_type, fanout_workflow(), fanout_runs).await?;
        println!(
            "{name:<8} {:<34} {:<34}",
            "fanout 1 to 8 (steps/s)",
            fanout.show()
        );
        let raw_latency = raw::latency(&cli.url, queue_type, &body, 10, latency_runs).await?;
        let latency = one_at_a_time(&cli, queue_type, latency_runs).await?;
        println!(
            "{name:<8} {:<34} {:<34} {}",
            "latency per hop, one at a time",
            latency.show(),
            raw_latency.show()
        );
        for count in [1, 2] {
            let (measure, peak_kb, cpu) = processes(&cli, queue_type, count, scale_runs).await?;
            println!(
                "{name:<8} {:<34} {:<34} peak RSS {:.1} MB, CPU {:.0} µs/step",
                format!("scale: {count} runner process(es), {scale_runs} queued"),
                measure.show(),
                peak_kb as f64 / 1024.0,
                cpu.as_secs_f64() * 1e6
            );
        }
        if let (Some(ours), Some(theirs)) = (inqubo_hop.rate, raw_hop.rate) {
            ratios.push((name, ours / theirs));
        }
        if let (Some(ours), Some(theirs)) = (latency.p50, raw_latency.p50) {
            println!(
                "{name:<8} latency p50 per hop: inqubo {:.2} ms, raw {:.2} ms, difference {:+.2} ms",
                ms(ours),
                ms(theirs),
                ms(ours) - ms(theirs)
            );
        }
    }
    for (name, ratio) in ratios {
        println!("hop throughput ratio inqubo/raw ({name}): {ratio:.2}");
    }
    Ok(())
}
