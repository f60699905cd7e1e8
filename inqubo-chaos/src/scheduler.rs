//! `inqubo-chaos scheduler`: runners that fire a cron schedule every second, whose leader is
//! SIGKILLed again and again. What must hold (docs/scheduling.md): a tick runs at most once
//! (two leaders firing it make one run, the other trigger answered `run.duplicate`); every run
//! a tick started ends; and a tick is lost only while no runner leads — a new leader fires the
//! latest due tick once and skips older ones.
//!
//! Each runner keeps a file named after its process id in a folder while it leads, so that the
//! harness kills the leader itself, not a runner at random.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use inqubo::{Client, EventKind, Runner, Schedule, Topology};
use tokio::process::{Child, Command};

use crate::workflow;

/// The schedule every scheduler runner is given: a tick every second.
pub(crate) const SCHEDULE: &str = "tick";

/// The workflow the ticks start.
const WORKFLOW: &str = "fanout";

/// A tick every second, its run id `tick@<time>`.
pub(crate) fn schedule() -> anyhow::Result<Schedule> {
    Ok(Schedule::cron(SCHEDULE, "* * * * * *")?)
}

/// Keeps `<dir>/<pid>` while `runner` leads its schedules (checked every 50 ms).
pub(crate) async fn mark_leadership(runner: &Runner, dir: &Path) {
    let mark = dir.join(std::process::id().to_string());
    loop {
        if runner.leads_schedules() {
            if !mark.exists() {
                let _ = std::fs::write(&mark, b"");
            }
        } else if mark.exists() {
            let _ = std::fs::remove_file(&mark);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The scenario's settings.
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) runners: usize,
    pub(crate) seconds: u64,
    pub(crate) leader_kills: usize,
}

struct Fleet {
    exe: PathBuf,
    url: String,
    prefix: String,
    leaders: PathBuf,
    log: PathBuf,
    children: Vec<Child>,
}

impl Fleet {
    fn spawn(&self) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        Ok(Command::new(&self.exe)
            .args(["runner", "--url", &self.url, "--prefix", &self.prefix])
            .args(["--workflow", WORKFLOW, "--schedule-leader-dir"])
            .arg(&self.leaders)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?)
    }

    /// The process id of the runner that leads now, waiting up to `patience` for one.
    async fn leader(&self, patience: Duration) -> Option<u32> {
        let deadline = Instant::now() + patience;
        loop {
            let marked: Vec<u32> = std::fs::read_dir(&self.leaders)
                .ok()?
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            let alive: Vec<u32> = self.children.iter().filter_map(Child::id).collect();
            if let Some(pid) = marked.into_iter().find(|pid| alive.contains(pid)) {
                return Some(pid);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the runner `pid` and starts another in its place.
    async fn kill(&mut self, pid: u32) -> anyhow::Result<()> {
        if let Some(index) = self.children.iter().position(|c| c.id() == Some(pid)) {
            self.children[index].kill().await?;
            let _ = std::fs::remove_file(self.leaders.join(pid.to_string()));
            self.children[index] = self.spawn()?;
        }
        Ok(())
    }
}

/// What was seen of each tick's run.
#[derive(Default)]
struct Seen {
    /// Runs whose first step started, by run id.
    started: BTreeSet<String>,
    /// Terminal events per run id, with their message ids.
    ends: HashMap<String, Vec<(EventKind, String)>>,
    /// Triggers answered `run.duplicate`: a tick fired twice, run once.
    duplicates: usize,
}

/// Runs the scenario; an error says what did not hold.
pub(crate) async fn orchestrate(settings: Settings) -> anyhow::Result<()> {
    let prefix = format!("chaos-sched-{:08x}", rand::random::<u32>());
    let leaders = std::env::temp_dir().join(format!("inqubo-chaos-{prefix}-leaders"));
    std::fs::create_dir_all(&leaders)?;
    let topology = Topology::new(prefix.clone(), Default::default())?;
    let client = Client::connect_with(&settings.url, topology.clone()).await?;
    let flow = workflow::build(WORKFLOW)?;
    let mut fleet = Fleet {
        exe: std::env::current_exe()?,
        url: settings.url.clone(),
        prefix: prefix.clone(),
        leaders: leaders.clone(),
        log: std::env::temp_dir().join(format!("inqubo-chaos-{prefix}.log")),
        children: Vec::new(),
    };
    for _ in 0..settings.runners {
        let child = fleet.spawn()?;
        fleet.children.push(child);
    }
    let started = Instant::now();
    println!(
        "scheduler chaos: {} runners firing `{SCHEDULE}` every second for {} s, the leader killed {} times; prefix {prefix}",
        settings.runners, settings.seconds, settings.leader_kills
    );
    // Follow the runs (the runners declare the workflow; retry until they have).
    let mut events = loop {
        match client.subscribe(Some(flow.name())).await {
            Ok(events) => break events,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let recording = {
        let seen = std::sync::Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                let run = event.run_id.to_string();
                let Ok(mut seen) = seen.lock() else { break };
                match event.kind {
                    EventKind::Started
                        if event.step.as_ref().is_some_and(|s| s.as_str() == "ingest") =>
                    {
                        seen.started.insert(run);
                    }
                    EventKind::RunDuplicate => seen.duplicates += 1,
                    kind if kind.ends_run() => {
                        let id = format!("{run}:{kind}:g{}", event.generation);
                        seen.ends.entry(run).or_default().push((kind, id));
                    }
                    _ => {}
                }
            }
        })
    };
    // Kill the leader at moments spread over the middle of the period.
    let mut kills = Vec::new();
    for k in 0..settings.leader_kills {
        let moment = Duration::from_secs_f64(
            settings.seconds as f64 * (0.2 + 0.6 * (k as f64 + 0.5) / settings.leader_kills as f64),
        );
        tokio::time::sleep_until((started + moment).into()).await;
        match fleet.leader(Duration::from_secs(5)).await {
            Some(pid) => {
                fleet.kill(pid).await?;
                kills.push(started.elapsed());
                println!(
                    "[{:>5.1}s] SIGKILL the leader (pid {pid}), started a new runner",
                    started.elapsed().as_secs_f64()
                );
            }
            None => println!(
                "[{:>5.1}s] no runner leads; nothing killed",
                started.elapsed().as_secs_f64()
            ),
        }
    }
    tokio::time::sleep_until((started + Duration::from_secs(settings.seconds)).into()).await;
    for child in &mut fleet.children {
        let _ = child.kill().await;
    }
    // Runs still going end on a runner of their own: one more, without the schedule.
    let finisher = Runner::builder(flow.clone())
        .url(&settings.url)
        .prefix(&prefix)
        .connect()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let unended = {
            let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            seen.started
                .iter()
                .filter(|run| !seen.ends.contains_key(*run))
                .count()
        };
        if unended == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    finisher.shutdown().await?;
    recording.abort();

    let seen = std::mem::take(&mut *seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    // Ticks by their second: `tick@2026-11-29T19:50:01Z`.
    let seconds: BTreeSet<u64> = seen
        .started
        .iter()
        .filter_map(|run| {
            let time = run.strip_prefix(&format!("{SCHEDULE}@"))?;
            let at = humantime::parse_rfc3339(time).ok()?;
            Some(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
        })
        .collect();
    let lost = match (seconds.first(), seconds.last()) {
        (Some(first), Some(last)) => {
            usize::try_from(last - first + 1).unwrap_or(usize::MAX) - seconds.len()
        }
        _ => 0,
    };
    let unended: Vec<&String> = seen
        .started
        .iter()
        .filter(|run| !seen.ends.contains_key(*run))
        .collect();
    let twice: Vec<&String> = seen
        .ends
        .iter()
        .filter(|(_, ends)| {
            let ids: BTreeSet<&String> = ends.iter().map(|(_, id)| id).collect();
            ids.len() > 1
        })
        .map(|(run, _)| run)
        .collect();
    // The policy's allowance: what falls in the gap between a leader's death and the next
    // leader's first probe (the lease, and a second of tick), per kill.
    let allowed = kills.len() * 3;
    println!();
    println!("ticks run                {}", seconds.len());
    println!("ticks lost               {lost} (allowed {allowed}: 3 per leader kill)");
    println!(
        "ticks fired twice        {} (answered run.duplicate, run once)",
        seen.duplicates
    );
    println!(
        "runs ended twice         {} (a tick's run with two different terminal events)",
        twice.len()
    );
    println!("runs never ended         {}", unended.len());
    println!("leader kills             {}", kills.len());
    println!("runner logs              {}", fleet.log.display());
    let _ = std::fs::remove_dir_all(&leaders);
    if let Ok(connection) = lapin::Connection::connect(&settings.url, Default::default()).await
        && let Ok(channel) = connection.create_channel().await
    {
        let _ = topology.delete_workflow(&channel, &flow).await;
        let _ = channel
            .queue_delete(
                topology.scheduler_queue(flow.name()).as_str().into(),
                Default::default(),
            )
            .await;
        let _ = topology.delete_shared(&channel).await;
        let _ = connection.close(200, "cleaned".into()).await;
    }
    let _ = client.close().await;
    let mut problems = Vec::new();
    if seconds.len() < settings.seconds as usize / 2 {
        problems.push(format!("only {} ticks ran", seconds.len()));
    }
    if lost > allowed {
        problems.push(format!("{lost} ticks lost, more than {allowed}"));
    }
    if !twice.is_empty() {
        problems.push(format!("{} runs ended twice", twice.len()));
    }
    if !unended.is_empty() {
        problems.push(format!("{} runs never ended", unended.len()));
    }
    if kills.len() < settings.leader_kills {
        problems.push(format!(
            "only {} of {} leader kills found a leader",
            kills.len(),
            settings.leader_kills
        ));
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join(", "));
    Ok(())
}
