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

mod joins;
mod map;
mod raw;
mod scenario;

use scenario::{
    chain_workflow, fanout_workflow, hop_workflow, hop_workflow_not_unique, live, one_at_a_time,
    payload, processes, queued, queued_with,
};

use std::time::Duration;

use clap::{Parser, Subcommand};
use inqubo::{QueueType, Runner};

#[derive(Debug, Parser)]
#[command(about = "Benchmark Inqubo against a raw lapin relay on the same broker")]
pub(crate) struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// A smaller run that finishes in under a minute.
    #[arg(long)]
    quick: bool,
    /// The broker.
    #[arg(long, env = "AMQP_URL", default_value = inqubo::DEFAULT_AMQP_URL)]
    pub(crate) url: String,
    /// Only this scenario (hop, chain, fanout, latency, scale), or `joins`: the seed workflow
    /// through 100,000 runs (10,000 with --quick), or `map`: one run of 10,000 elements and
    /// 1,000 runs of 10 (a tenth with --quick); no other run includes these two.
    #[arg(long)]
    only: Option<String>,
    /// With `--only map`: the elements of the one wide run.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) map_width: usize,
    /// Prefetch of runners and of the raw relay.
    #[arg(long, default_value_t = 100)]
    pub(crate) prefetch: u16,
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

    pub(crate) fn show(&self) -> String {
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

pub(crate) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The step input and output: about 200 bytes of JSON.
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
    if cli.only.as_deref() == Some("joins") {
        let total = if cli.quick { 10_000 } else { 100_000 };
        println!(
            "inqubo-bench joins: the seed workflow through {total} runs on one runner, prefetch {}",
            cli.prefetch
        );
        joins::book_memory(100_000)?;
        for queue_type in [QueueType::Quorum, QueueType::Classic] {
            joins::joins(&cli, queue_type, total).await?;
        }
        return Ok(());
    }
    if cli.only.as_deref() == Some("map") {
        let scale = if cli.quick { 10 } else { 1 };
        println!(
            "inqubo-bench map: one runner, prefetch {}, elements per second",
            cli.prefetch
        );
        for queue_type in [QueueType::Quorum, QueueType::Classic] {
            map::map(&cli, queue_type, scale).await?;
        }
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
        let open_hop = queued(&cli, queue_type, hop_workflow_not_unique(), hop_runs).await?;
        println!(
            "{name:<8} {:<34} {:<34}",
            "hop, unique_runs(false)",
            open_hop.show()
        );
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
