//! The chaos harness: proof that every triggered run reaches its terminal events while runner
//! processes are killed with SIGKILL and the broker restarts.
//!
//! ```text
//! cargo run -p inqubo-chaos -- --runners 2 --runs 500 --kills 3 --broker-restart
//! ```
//!
//! By default it starts a private RabbitMQ node on 127.0.0.1:5690 (its own name, port and data
//! folder, via `scripts/rabbitmq-node.sh`), so restarting it disturbs nothing else; `--url`
//! points it at an existing broker (or cluster) instead. It spawns the runners as child
//! processes of itself (`inqubo-chaos runner`), triggers the runs at a steady rate, kills a
//! random runner with SIGKILL at random moments and starts a new one in its place, restarts
//! the broker once, waits until every run finished, prints the figures and exits non-zero if
//! any run was lost or ended twice.
//!
//! `--cancel-every N` cancels every Nth run at a random moment, and `--fail-every N` makes
//! every Nth run fail one step fatally once, then resumes it (see `lifecycle.rs`). Every
//! run generation must end with exactly one terminal event (`run.succeeded`, `run.failed` or
//! `run.cancelled`; the same event delivered twice is a duplicate, not a violation).

#![allow(clippy::print_stdout)]

mod lifecycle;
mod observer;
mod scheduler;
mod workflow;

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use inqubo::{Client, RunId, Runner, Topology, WorkflowName};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::process::{Child, Command};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(about = "Kill runners and restart the broker while runs go through; count what survives")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// The workflow: `fanout` (a tree), `diamond` (a join) or `map` (100 elements per run,
    /// then a reduce).
    #[arg(long, default_value = "fanout", value_parser = ["fanout", "diamond", "map"])]
    workflow: String,
    /// Runner processes to keep alive.
    #[arg(long, default_value_t = 2)]
    runners: usize,
    /// Runs to trigger.
    #[arg(long, default_value_t = 500)]
    runs: u64,
    /// Runs triggered per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// SIGKILLs of random runners, spread over the triggering period.
    #[arg(long, default_value_t = 3)]
    kills: usize,
    /// Restart the broker once, half-way through (only with the private node).
    #[arg(long)]
    broker_restart: bool,
    /// Use this broker (comma-separated addresses for a cluster) instead of a private node.
    #[arg(long, env = "CHAOS_AMQP_URL")]
    url: Option<String>,
    /// A shell command run once, half-way through (for example, stop a cluster node).
    #[arg(long)]
    disrupt: Option<String>,
    /// AMQP port of the private node.
    #[arg(long, default_value_t = 5690)]
    node_port: u16,
    /// When runs are lost, leave the broker running and the prefix in place, for inspection.
    #[arg(long)]
    keep_on_failure: bool,
    /// Give up waiting for runs after this many seconds.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Cancel every Nth run, at a random moment of its first 250 ms (`Client::cancel`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    cancel_every: Option<u64>,
    /// Make every Nth run (leaving out runs to cancel) fail one step fatally on its first
    /// attempt, then resume it once its `run.failed` is seen (`Client::resume`); it must end
    /// `succeeded` in generation 2. The failing step cycles through the workflow's steps.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    fail_every: Option<u64>,
    /// Seed of the harness's random choices: when to kill which runner, when to cancel.
    /// Printed at the start; the same seed repeats the same schedule (not the same timing of
    /// the processes it disturbs).
    #[arg(long)]
    seed: Option<u64>,
    /// Make the runners snapshot each join shard's journal every N batches (default: their
    /// own policy, which a short run never reaches), so that kills land during snapshots and
    /// takeovers start from them.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    join_snapshot_every: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Run the chaos workflow until SIGTERM (started by the harness).
    Runner {
        #[arg(long)]
        url: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        workflow: String,
        #[arg(long)]
        join_snapshot_every: Option<u64>,
        /// Fire a cron schedule every second, and keep a file named after this process's id
        /// in this folder while it leads (started by the `scheduler` scenario).
        #[arg(long)]
        schedule_leader_dir: Option<PathBuf>,
    },
    /// Runners firing a schedule every second while their leader is SIGKILLed: each tick runs
    /// at most once, every run ends, and ticks are lost only while no runner leads.
    Scheduler {
        /// The broker (a test broker: the scenario's prefix is deleted afterwards).
        #[arg(long, env = "CHAOS_AMQP_URL", default_value = inqubo::DEFAULT_AMQP_URL)]
        url: String,
        /// Runner processes to keep alive.
        #[arg(long, default_value_t = 3)]
        runners: usize,
        /// How long the schedule runs.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// How many times the leader is killed.
        #[arg(long, default_value_t = 3)]
        leader_kills: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("inqubo=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match &cli.mode {
        Some(Mode::Runner {
            url,
            prefix,
            workflow,
            join_snapshot_every,
            schedule_leader_dir,
        }) => {
            run_runner(
                url,
                prefix,
                workflow,
                *join_snapshot_every,
                schedule_leader_dir.as_deref(),
            )
            .await
        }
        Some(Mode::Scheduler {
            url,
            runners,
            seconds,
            leader_kills,
        }) => {
            scheduler::orchestrate(scheduler::Settings {
                url: url.clone(),
                runners: *runners,
                seconds: *seconds,
                leader_kills: *leader_kills,
            })
            .await
        }
        None => {
            let private_node = cli.url.is_none().then(|| PrivateNode::at(cli.node_port));
            // Interrupted, the harness still stops its private node (its runners die with it).
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                result = orchestrate(cli) => result,
                _ = tokio::signal::ctrl_c() => stop_interrupted(private_node).await,
                _ = terminate.recv() => stop_interrupted(private_node).await,
            }
        }
    }
}

async fn stop_interrupted(node: Option<PrivateNode>) -> anyhow::Result<()> {
    if let Some(node) = node {
        node.down().await?;
        let _ = std::fs::remove_dir_all(node.dir.parent().unwrap_or(&node.dir));
    }
    anyhow::bail!("interrupted")
}

/// One runner process: retries its first connection while the broker is away.
async fn run_runner(
    url: &str,
    prefix: &str,
    workflow_name: &str,
    join_snapshot_every: Option<u64>,
    schedule_leader_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let flow = workflow::build(workflow_name)?;
    let runner = loop {
        let mut builder = Runner::builder(flow.clone())
            .url(url)
            .prefix(prefix)
            .prefetch(8)
            .max_in_flight(16);
        if let Some(every) = join_snapshot_every {
            builder = builder.join_snapshot_every(usize::try_from(every).unwrap_or(usize::MAX));
        }
        if schedule_leader_dir.is_some() {
            builder = builder.schedule(scheduler::schedule()?);
        }
        match builder.connect().await {
            Ok(runner) => break runner,
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "broker not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    if let Some(dir) = schedule_leader_dir {
        tokio::select! {
            () = scheduler::mark_leadership(&runner, dir) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        runner.shutdown().await?;
        return Ok(());
    }
    runner
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The private broker node, when the harness runs its own.
struct PrivateNode {
    script: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl PrivateNode {
    /// The node this process uses on `port` (not started).
    fn at(port: u16) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-node.sh");
        let dir = std::env::temp_dir()
            .join(format!("inqubo-chaos-{}", std::process::id()))
            .join("chaos");
        Self { script, dir, port }
    }

    async fn start(port: u16) -> anyhow::Result<Self> {
        let node = Self::at(port);
        node.up().await?;
        Ok(node)
    }

    async fn up(&self) -> anyhow::Result<()> {
        let status = Command::new("bash")
            .arg(&self.script)
            .args(["start", &self.name(), &self.port.to_string()])
            .arg(&self.dir)
            .status()
            .await?;
        anyhow::ensure!(status.success(), "private RabbitMQ node did not start");
        Ok(())
    }

    async fn down(&self) -> anyhow::Result<()> {
        Command::new("bash")
            .arg(&self.script)
            .args(["stop", &self.name()])
            .arg(&self.dir)
            .status()
            .await?;
        Ok(())
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The node's name: one per port, so that harnesses on different ports can run at once.
    fn name(&self) -> String {
        format!("chaos{}", self.port)
    }
}

struct Runners {
    exe: PathBuf,
    workflow: String,
    url: String,
    prefix: String,
    join_snapshot_every: Option<u64>,
    children: Vec<Child>,
    log: PathBuf,
}

impl Runners {
    fn spawn_one(&self) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(&self.exe);
        command
            .args(["runner", "--url", &self.url, "--prefix", &self.prefix])
            .args(["--workflow", &self.workflow]);
        if let Some(every) = self.join_snapshot_every {
            command.args(["--join-snapshot-every", &every.to_string()]);
        }
        Ok(command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?)
    }

    async fn kill_random(&mut self, rng: &mut StdRng) -> anyhow::Result<()> {
        let index = rng.random_range(0..self.children.len());
        self.children[index].kill().await?;
        self.children[index] = self.spawn_one()?;
        Ok(())
    }

    async fn stop_all(&mut self) {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
    }
}

async fn orchestrate(cli: Cli) -> anyhow::Result<()> {
    let started = Instant::now();
    let node = match &cli.url {
        Some(_) => None,
        None => Some(PrivateNode::start(cli.node_port).await?),
    };
    let url = match (&cli.url, &node) {
        (Some(url), _) => url.clone(),
        (None, Some(node)) => node.url(),
        (None, None) => unreachable!("a node is started when no url is given"),
    };
    let prefix = format!("chaos-{:08x}", rand::random::<u32>());
    let seed = cli.seed.unwrap_or_else(rand::random);
    println!("seed {seed} (--seed {seed} repeats the schedule of kills and cancels)");
    let mut rng = StdRng::seed_from_u64(seed);
    let topology = Topology::new(prefix.clone(), Default::default())?;
    let urls: Vec<String> = url.split(',').map(str::to_owned).collect();
    let queue = observer::declare(&urls[0], &topology)
        .await
        .context("declaring the observer queue")?;
    let tally = Arc::new(Mutex::new(observer::Tally::new(started)));
    let observing = tokio::spawn(observer::observe(
        urls.clone(),
        queue.clone(),
        Arc::clone(&tally),
    ));

    let log = std::env::temp_dir().join(format!("inqubo-chaos-{prefix}.log"));
    let mut runners = Runners {
        exe: std::env::current_exe()?,
        workflow: cli.workflow.clone(),
        url: url.clone(),
        prefix: prefix.clone(),
        join_snapshot_every: cli.join_snapshot_every,
        children: Vec::new(),
        log: log.clone(),
    };
    for _ in 0..cli.runners {
        let child = runners.spawn_one()?;
        runners.children.push(child);
    }

    // Trigger at a steady rate; kill and disrupt at random moments of that period.
    let period = Duration::from_secs_f64(cli.runs as f64 / cli.rate.max(1) as f64);
    let mut moments: Vec<(Duration, &str)> = (0..cli.kills)
        .map(|_| (period.mul_f64(rng.random_range(0.1..0.9)), "kill"))
        .collect();
    if cli.broker_restart && node.is_some() {
        moments.push((period / 2, "restart"));
    }
    if cli.disrupt.is_some() {
        moments.push((period / 2, "disrupt"));
    }
    moments.sort_by_key(|(moment, _)| *moment);

    // The chaos runs beside the triggering, on its own schedule.
    let disrupt = cli.disrupt.clone();
    let mut chaos_rng = StdRng::seed_from_u64(rng.random());
    let chaos = tokio::spawn(async move {
        let chaos_start = Instant::now();
        let (mut kills, mut restarts) = (0, 0);
        for (moment, action) in moments {
            tokio::time::sleep_until((chaos_start + moment).into()).await;
            let at = started.elapsed().as_secs_f64();
            match action {
                "kill" => {
                    runners.kill_random(&mut chaos_rng).await?;
                    kills += 1;
                    println!("[{at:>6.1}s] SIGKILL a runner, started a new one");
                }
                "restart" => {
                    if let Some(node) = &node {
                        println!("[{at:>6.1}s] stopping the broker");
                        node.down().await?;
                        node.up().await?;
                        restarts += 1;
                        println!("[{:>6.1}s] broker back", started.elapsed().as_secs_f64());
                    }
                }
                _ => {
                    if let Some(command) = &disrupt {
                        println!("[{at:>6.1}s] running: {command}");
                        Command::new("bash").args(["-c", command]).status().await?;
                    }
                }
            }
        }
        anyhow::Ok((runners, node, kills, restarts))
    });

    let client = Client::connect_with(&url, topology.clone()).await?;
    let workflow: WorkflowName = cli.workflow.parse()?;
    let plan = lifecycle::Plan {
        cancel_every: cli.cancel_every,
        fail_every: cli.fail_every,
        steps: workflow::steps(&cli.workflow).len(),
    };
    let resumes = Arc::new(Mutex::new(lifecycle::Resumes::default()));
    let to_resume = (0..cli.runs)
        .filter(|run| plan.fails_at(*run).is_some())
        .map(|run| RunId::new(lifecycle::run_id(run)))
        .collect::<Result<Vec<_>, _>>()?;
    let resuming = tokio::spawn(lifecycle::resume_failed(
        client.clone(),
        workflow.clone(),
        to_resume,
        Arc::clone(&tally),
        Arc::clone(&resumes),
    ));
    let mut cancelling = Vec::new();
    let trigger_start = Instant::now();
    let mut triggered = 0_u64;
    let mut trigger_retries = 0_u64;
    for run in 0..cli.runs {
        let due = trigger_start + period.mul_f64(run as f64 / cli.runs as f64);
        tokio::time::sleep_until(due.into()).await;
        // A trigger whose confirm is lost is retried: at least once, so a run may start twice.
        let run_id = RunId::new(lifecycle::run_id(run))?;
        let input = workflow::input(u32::try_from(run)?, plan.fails_at(run));
        loop {
            match client.trigger(&workflow, run_id.clone(), &input).await {
                Ok(_) => break,
                Err(error) => {
                    trigger_retries += 1;
                    tracing::debug!(%error, "trigger failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        triggered += 1;
        if plan.cancels(run) {
            let tally = Arc::clone(&tally);
            let after = rng.random_range(Duration::ZERO..lifecycle::CANCEL_WITHIN);
            let cancel = lifecycle::cancel_soon(
                client.clone(),
                workflow.clone(),
                run_id.clone(),
                after,
                tally,
            );
            cancelling.push((run_id.to_string(), tokio::spawn(cancel)));
        }
    }
    println!(
        "[{:>6.1}s] all {triggered} runs triggered",
        started.elapsed().as_secs_f64()
    );

    let deadline = Instant::now() + Duration::from_secs(cli.timeout);
    loop {
        let ended = {
            let tally = tally
                .lock()
                .map_err(|_| anyhow::anyhow!("tally poisoned"))?;
            let resumes = resumes
                .lock()
                .map_err(|_| anyhow::anyhow!("resumes poisoned"))?;
            (0..triggered).all(|run| lifecycle::run_end(&plan, run, &tally, &resumes).is_some())
        };
        let answered = cancelling.iter().all(|(_, cancel)| cancel.is_finished());
        if (ended && answered) || Instant::now() > deadline {
            break;
        }
        // The harness is not a test: it polls its own counters while runs drain.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = started.elapsed();
    resuming.abort();
    let mut cancels = Vec::new();
    for (run, cancel) in cancelling {
        if cancel.is_finished() {
            cancels.push(cancel.await?);
        } else {
            cancel.abort();
            cancels.push(lifecycle::Cancel {
                run,
                answer: lifecycle::CancelAnswer::Failed("still waiting at the end".to_owned()),
                retries: 0,
                unroutable: 0,
            });
        }
    }
    let (mut runners, node, kills_done, restarts_done) = chaos.await??;
    runners.stop_all().await;
    observing.abort();

    let mut parked = None;
    for url in &urls {
        if let Ok(count) = count_parked(url, &topology, &cli.workflow).await {
            parked = Some(count);
            break;
        }
    }
    // Nothing is parked unless runs fail on purpose: anything else there (a join piece that
    // reached a shard that does not own its run, say) is a fault the runs may have hidden.
    let parked_unexpectedly = match parked {
        Some(count) if count > 0 && cli.fail_every.is_none() => count,
        _ => 0,
    };
    let parked = parked.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    let mut stranded = Vec::new();
    for url in &urls {
        if let Ok(depths) = queue_depths(url, &topology, &cli.workflow).await {
            stranded = depths;
            break;
        }
    }
    let problems = {
        let tally = tally
            .lock()
            .map_err(|_| anyhow::anyhow!("tally poisoned"))?;
        let resumes = resumes
            .lock()
            .map_err(|_| anyhow::anyhow!("resumes poisoned"))?;
        let verdict = lifecycle::judge(&plan, triggered, &tally, &resumes, &cancels);
        let violations = tally.violations();
        println!();
        println!("runs triggered           {triggered}");
        println!("runs completed           {}", verdict.succeeded);
        println!("runs failed (parked)     {}", verdict.failed);
        if plan.cancel_every.is_some() {
            println!("runs cancelled           {}", verdict.cancelled);
        }
        println!("runs lost                {}", verdict.lost.len());
        if !verdict.lost.is_empty() {
            let first: Vec<&str> = verdict.lost.iter().take(8).map(String::as_str).collect();
            println!("unfinished runs, first few: {}", first.join(", "));
        }
        println!(
            "terminal violations      {} (a run generation that ended twice: two kinds, or two message ids)",
            violations.len()
        );
        for violation in violations.iter().take(8) {
            println!("  {violation}");
        }
        println!(
            "duplicate run ends       {} (a run's terminal event delivered again, same message id)",
            tally.duplicate_run_ends()
        );
        if plan.cancel_every.is_some() {
            println!(
                "cancel requests          {}",
                lifecycle::describe_cancels(&cancels, triggered, &plan)
            );
        }
        if plan.fail_every.is_some() {
            println!(
                "runs resumed             {} of {} failed on purpose; {} succeeded in generation 2, {} given up; tries that found nothing parked {}, that failed {}",
                verdict.resumed,
                verdict.failed_on_purpose,
                verdict.succeeded_after_resume,
                verdict.resumes_given_up,
                resumes.found_nothing,
                resumes.failed_tries
            );
        }
        if plan.cancel_every.is_some() || plan.fail_every.is_some() {
            println!(
                "lifecycle mismatches     {} (a run that ended otherwise than its cancel or resume says)",
                verdict.mismatches.len()
            );
            for mismatch in verdict.mismatches.iter().take(20) {
                println!("  {mismatch}");
            }
        }
        if cli.workflow == "diamond" {
            println!(
                "join fired again         {} runs (the join step's first attempt started twice)",
                tally.repeated_first_starts(workflow::JOIN_STEP)
            );
        }
        if cli.workflow == "map" {
            println!(
                "reduce fired again       {} runs (the reduce's first attempt started twice)",
                tally.repeated_first_starts(workflow::REDUCE_STEP)
            );
        }
        println!(
            "duplicate step attempts  {} (an attempt started again after a kill or reconnect)",
            tally.duplicate_attempts()
        );
        println!(
            "duplicate successes      {} (a step's succeeded published twice)",
            tally.duplicate_successes()
        );
        println!("parked messages          {parked}");
        println!("runner kills             {kills_done}");
        println!("broker restarts          {restarts_done}");
        println!("trigger retries          {trigger_retries}");
        println!("events observed          {}", tally.events);
        println!("wall time                {:.1} s", wall.as_secs_f64());
        println!("runner logs              {}", log.display());
        for (queue, depth) in &stranded {
            println!("messages left in {queue}: {depth}");
        }
        // The events of the first few runs named above, to see what went wrong.
        let mut explained: Vec<&str> = Vec::new();
        for line in verdict
            .lost
            .iter()
            .chain(&violations)
            .chain(&verdict.mismatches)
        {
            let run = line.split([' ', ':']).next().unwrap_or_default();
            if explained.len() < 4 && !explained.contains(&run) {
                explained.push(run);
                println!("events of {run}: {}", tally.trail(run).join(", "));
            }
        }
        let mut problems = Vec::new();
        for (count, what) in [
            (verdict.lost.len(), "runs lost"),
            (violations.len(), "terminal-event violations"),
            (verdict.mismatches.len(), "lifecycle mismatches"),
            (
                parked_unexpectedly as usize,
                "messages parked though no run fails on purpose",
            ),
        ] {
            if count > 0 {
                problems.push(format!("{count} {what}"));
            }
        }
        problems.join(", ")
    };

    if !problems.is_empty() && cli.keep_on_failure {
        println!("{problems}: leaving the broker and prefix {prefix} as they are for inspection");
        anyhow::bail!("{problems}");
    }
    // Bounded: on a cluster that lost a node, deleting a queue can wait for a long time.
    let cleaning = async {
        for url in &urls {
            if cleanup(url, &topology, &cli.workflow, &queue).await {
                break;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), cleaning)
        .await
        .is_err()
    {
        println!("cleanup of prefix {prefix} did not finish within 60 s; its queues may remain");
    }
    if let Some(node) = node {
        node.down().await?;
        let _ = std::fs::remove_dir_all(node.dir.parent().unwrap_or(&node.dir));
    }
    anyhow::ensure!(problems.is_empty(), "{problems}");
    Ok(())
}

/// The queues of the prefix that still hold messages (every run should have drained them).
async fn queue_depths(
    url: &str,
    topology: &Topology,
    workflow_name: &str,
) -> anyhow::Result<Vec<(String, u32)>> {
    let flow = workflow::build(workflow_name)?;
    let mut names: Vec<String> = flow
        .steps()
        .iter()
        .map(|s| topology.step_queue(flow.name(), s.name()).to_string())
        .collect();
    names.extend(
        (0..inqubo::protocol::DELAY_TIERS).map(|tier| topology.delay_queue(tier).to_string()),
    );
    let connection = lapin::Connection::connect(url, Default::default()).await?;
    let channel = connection.create_channel().await?;
    let mut depths = Vec::new();
    for name in names {
        let queue = channel
            .queue_declare(
                name.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
        if queue.message_count() > 0 {
            depths.push((name, queue.message_count()));
        }
    }
    let _ = connection.close(200, "counted".into()).await;
    Ok(depths)
}

async fn count_parked(url: &str, topology: &Topology, workflow_name: &str) -> anyhow::Result<u32> {
    let parked = topology.parked_queue(&workflow_name.parse()?);
    let connection = lapin::Connection::connect(url, Default::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            parked.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
    let _ = connection.close(200, "counted".into()).await;
    Ok(queue.message_count())
}

/// Deletes the harness's queues and exchanges through `url`; false if it cannot connect.
async fn cleanup(
    url: &str,
    topology: &Topology,
    workflow_name: &str,
    observer_queue: &str,
) -> bool {
    let Ok(connection) = lapin::Connection::connect(url, Default::default()).await else {
        return false;
    };
    let Ok(channel) = connection.create_channel().await else {
        return false;
    };
    let _ = channel
        .queue_delete(observer_queue.into(), Default::default())
        .await;
    if let Ok(flow) = workflow::build(workflow_name) {
        let _ = topology.delete_workflow(&channel, &flow).await;
        let _ = topology.delete_shared(&channel).await;
    }
    let _ = connection.close(200, "cleaned".into()).await;
    true
}
