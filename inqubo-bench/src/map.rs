//! The `map` scenario: one run whose map has 10,000 elements (`--map-width`), and 1,000 runs
//! of 10 elements each, in elements per second, next to a raw relay that writes as many messages per element.

use std::time::Instant;

use inqubo::{QueueType, Step, StepContext, StepError, Workflow};

use crate::{Cli, Measure, raw, scenario::Prepared};

async fn list(n: u64, _: StepContext) -> Result<Vec<u64>, StepError> {
    Ok((0..n).collect())
}

async fn element(x: u64, _: StepContext) -> Result<u64, StepError> {
    Ok(x + 1)
}

async fn total(v: Vec<u64>, _: StepContext) -> Result<u64, StepError> {
    Ok(v.iter().sum())
}

fn map_workflow() -> Workflow {
    Workflow::builder("mapbench")
        .start(Step::new("list", list))
        .map(Step::new("element", element))
        .reduce(Step::new("total", total))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Messages a runner publishes per element, counted from docs/protocol.md: its input (1),
/// `started` and `succeeded` (2), its piece to the collector (1), and its share of the
/// collector's journal records (a batch record per up to 256 pieces: about 0).
const MESSAGES_PER_ELEMENT: usize = 4;

/// `runs` runs of `width` elements each through one runner: elements per second.
async fn through(
    cli: &Cli,
    queue_type: QueueType,
    runs: usize,
    width: u64,
) -> anyhow::Result<Measure> {
    let mut prepared = Prepared::new(&cli.url, queue_type, map_workflow()).await?;
    let runner = prepared
        .runner(cli.prefetch)
        .url(&cli.url)
        .connect()
        .await?;
    let start = Instant::now();
    prepared
        .trigger_with(runs, 0, serde_json::to_vec(&width)?)
        .await?;
    let (last, _) = prepared.wait(runs).await?;
    let elements = runs * usize::try_from(width)?;
    runner.shutdown().await?;
    prepared.cleanup().await;
    Ok(Measure::throughput(elements, last - start))
}

/// Prints the map scenario on `queue_type`.
pub(crate) async fn map(cli: &Cli, queue_type: QueueType, scale: usize) -> anyhow::Result<()> {
    let name = if queue_type == QueueType::Quorum {
        "quorum"
    } else {
        "classic"
    };
    let wide = cli.map_width / scale;
    let one = through(cli, queue_type, 1, u64::try_from(wide)?).await?;
    let many = through(cli, queue_type, 1_000 / scale, 10).await?;
    let baseline = raw::chain_writing(
        &cli.url,
        queue_type,
        cli.prefetch,
        b"1",
        wide,
        1,
        MESSAGES_PER_ELEMENT,
    )
    .await?;
    println!(
        "{name:<8} {:<34} {}",
        format!("map: 1 run x {wide} elements"),
        one.show()
    );
    println!(
        "{name:<8} {:<34} {}",
        format!("map: {} runs x 10 elements", 1_000 / scale),
        many.show()
    );
    println!(
        "{name:<8} {:<34} {}",
        format!("raw relay, 1 hop x {MESSAGES_PER_ELEMENT} messages"),
        baseline.show()
    );
    if let (Some(wide), Some(narrow), Some(theirs)) = (one.rate, many.rate, baseline.rate) {
        println!(
            "{name:<8} map elements/s / protocol-equal raw relay: {:.2} (one wide run), {:.2} (many narrow runs)",
            wide / theirs,
            narrow / theirs
        );
    }
    Ok(())
}
