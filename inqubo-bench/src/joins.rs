//! The `joins` scenario: the seed's own workflow (`get_data → process_data → two parallel
//! loads`, which ends at the run join like every workflow) as history grows, how long a run
//! takes to end after its last step, and a raw relay that writes as many messages.

use std::time::Instant;

use futures_util::StreamExt;
use inqubo::{EventKind, QueueType, Step, Workflow};

use crate::{
    Cli, Measure, ms, raw,
    scenario::{Prepared, payload, relay},
};

/// The seed workflow's shape, with steps that pass their input on.
pub(crate) fn seed_workflow() -> Workflow {
    Workflow::builder("seed")
        .start(Step::new("get_data", relay))
        .then(Step::new("process_data", relay))
        .then((
            Step::new("load_data_to_external_system", relay),
            Step::new("load_data_to_internal_system", relay),
        ))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs per measured window.
const WINDOW: usize = 2_000;

/// Messages a runner publishes per step of the seed workflow, counted from docs/protocol.md:
/// per run, the trigger's pass to the run join and back (2), `started` and `succeeded` of 4
/// steps (8), 2 pieces for the run join and `run.succeeded` (3), and its share of the join
/// journals' batch records (about 1): 14 messages for 4 steps.
const MESSAGES_PER_STEP: usize = 4;

/// Pushes `total` runs of the seed workflow through one runner, window by window, and prints
/// the steady-state throughput of the first and the last window, the run-level and leaves'
/// latency one run at a time, and the protocol-equal raw relay.
pub(crate) async fn joins(cli: &Cli, queue_type: QueueType, total: usize) -> anyhow::Result<()> {
    let name = if queue_type == QueueType::Quorum {
        "quorum"
    } else {
        "classic"
    };
    let workflow = seed_workflow();
    let steps = workflow.steps().len();
    let mut prepared = Prepared::new(&cli.url, queue_type, workflow).await?;
    let runner = prepared
        .runner(cli.prefetch)
        .url(&cli.url)
        .connect()
        .await?;
    let mut rates = Vec::new();
    let mut done = 0;
    while done < total {
        let count = WINDOW.min(total - done);
        let start = Instant::now();
        prepared.trigger(count, done).await?;
        let (last, _) = prepared.wait(count).await?;
        rates.push((
            done + count,
            (count * steps) as f64 / (last - start).as_secs_f64(),
        ));
        done += count;
        if done % 20_000 == 0 {
            eprintln!(
                "joins: {done} runs through, {:.0} steps/s",
                rates[rates.len() - 1].1
            );
        }
    }
    let (first, last) = (rates[0], rates[rates.len() - 1]);
    println!(
        "{name:<8} {:<34} {:>8.0}/s",
        format!("seed workflow after {} runs", first.0),
        first.1
    );
    println!(
        "{name:<8} {:<34} {:>8.0}/s",
        format!("seed workflow after {} runs", last.0),
        last.1
    );
    println!(
        "{name:<8} seed workflow steady-state ratio {}k/{}k: {:.2}",
        last.0 / 1000,
        first.0 / 1000,
        last.1 / first.1
    );

    // One run at a time: when its last leaf succeeded, and when the run ended.
    let mut events = runner
        .client()
        .subscribe(Some(runner.workflow().name()))
        .await?;
    let mut leaves = Vec::new();
    let mut ends = Vec::new();
    for i in 0..200 {
        let sent = prepared.trigger(1, total + i).await?;
        let (run, trigger_at) = sent
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no run"))?;
        let mut last_leaf = None;
        let mut leaves_left = 2;
        while let Some(event) = events.next().await {
            let event = event?;
            if event.run_id.as_str() != run {
                continue;
            }
            match event.kind {
                EventKind::Succeeded
                    if event
                        .step
                        .as_ref()
                        .is_some_and(|s| s.as_str().starts_with("load_")) =>
                {
                    leaves_left -= 1;
                    last_leaf = Some(Instant::now());
                }
                EventKind::RunSucceeded => {
                    ends.push(Instant::now() - trigger_at);
                    break;
                }
                _ => {}
            }
        }
        if let (Some(leaf), 0) = (last_leaf, leaves_left) {
            leaves.push(leaf - trigger_at);
        }
        prepared.wait(1).await?;
    }
    let (leaves, ends) = (Measure::latency(leaves), Measure::latency(ends));
    if let (Some(leaf), Some(end)) = (leaves.p50, ends.p50) {
        println!(
            "{name:<8} one run at a time: run-level p50 {:.2} ms, leaves' p50 {:.2} ms, difference {:+.2} ms",
            ms(end),
            ms(leaf),
            ms(end) - ms(leaf)
        );
    }
    runner.shutdown().await?;
    prepared.cleanup().await;

    let raw = raw::chain_writing(
        &cli.url,
        queue_type,
        cli.prefetch,
        &payload(),
        WINDOW,
        steps,
        MESSAGES_PER_STEP,
    )
    .await?;
    println!(
        "{name:<8} {:<34} {}",
        format!("raw relay, {steps} hops x {MESSAGES_PER_STEP} messages"),
        raw.show()
    );
    if let Some(theirs) = raw.rate {
        println!(
            "{name:<8} seed workflow / protocol-equal raw relay: {:.2}",
            first.1 / theirs
        );
    }
    Ok(())
}

/// The resident memory of this process, in kB.
fn resident_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What `open` open joins cost a runner: the run join of the seed workflow holding one
/// 200-byte output for each of `open` runs (the other leaf parked or still to come), its
/// resident memory, its snapshot's size and how long writing the snapshot takes.
pub(crate) fn book_memory(open: usize) -> anyhow::Result<()> {
    use inqubo::join::{JoinBook, JoinTarget, Piece};
    let leaves = [
        inqubo::StepName::new("load_data_to_external_system")?,
        inqubo::StepName::new("load_data_to_internal_system")?,
    ];
    let output = serde_json::to_vec(&serde_json::json!({"n": 1, "pad": "x".repeat(180)}))?;
    let before = resident_kb().unwrap_or(0);
    let mut book = JoinBook::new();
    for i in 0..open {
        let run = inqubo::RunId::new(format!("{:08x}-run-{i}", i.wrapping_mul(2_654_435_761)))?;
        let piece = Piece::Output {
            parent: leaves[0].clone(),
            output: output.clone(),
            generation: 1,
        };
        book.add(&run, piece, JoinTarget::Run(&leaves));
    }
    let after = resident_kb().unwrap_or(0);
    let start = Instant::now();
    let snapshot = book.snapshot_at_version();
    let took = start.elapsed();
    let parts = inqubo::journal::snapshot_parts(&snapshot).len();
    println!(
        "book of {open} open joins: {:.1} MB resident ({:.0} bytes per join), snapshot {:.1} MB in {parts} parts, written in {:.0} ms",
        (after.saturating_sub(before)) as f64 / 1024.0,
        (after.saturating_sub(before) * 1024) as f64 / open as f64,
        snapshot.len() as f64 / (1024.0 * 1024.0),
        ms(took)
    );
    Ok(())
}
