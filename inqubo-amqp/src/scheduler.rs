//! Firing a workflow's cron schedules from exactly one runner of the fleet.
//!
//! Every runner given schedules ([`RunnerBuilder::schedule`](crate::RunnerBuilder::schedule))
//! consumes the workflow's scheduler queue as a *single active consumer* and drops a probe into
//! it every [`PROBE_INTERVAL`]. RabbitMQ delivers every probe to the active consumer only, so
//! the runner that received a probe within [`LEASE`] is the leader; when it stops or loses its
//! connection, the broker makes another consumer active, and that runner leads from its next
//! probe on. The leader fires each tick that falls due as a trigger whose run id is the
//! schedule's name and the tick's time: if two runners ever fire the same tick (a leader
//! change at the wrong moment), the run join admits it once and answers the other with
//! `run.duplicate`.
//!
//! Missed ticks: a runner that becomes leader fires the latest tick of each schedule once if
//! it is younger than the schedule's catch-up window (an hour by default; a tick already run
//! is then a duplicate and starts nothing), and skips older ones.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use futures_util::StreamExt;
use inqubo_core::{
    WorkflowName,
    protocol::{self, QueueName, argument},
    schedule::{Schedule, ScheduleDefinition},
};
use lapin::{
    Channel,
    options::{BasicConsumeOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    client::Client,
    error::{Error, Result},
    publisher::Publisher,
    wire::Wire,
};

/// How often each runner drops a probe into the scheduler queue.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How long after its last probe a runner still counts as the leader.
pub(crate) const LEASE: Duration = Duration::from_secs(2);

/// How often the leader reads the schedules stored with `inqubo schedule add`.
const REFRESH_STORED: Duration = Duration::from_secs(2);

/// How often the leader looks for due ticks.
const TICK_CHECK: Duration = Duration::from_millis(100);

/// Probes the queue keeps at most (the rest are dropped, oldest first).
const MAX_PROBES: i64 = 16;

/// Whether this runner leads its workflow's schedules now.
#[derive(Debug, Default)]
pub(crate) struct Leadership(AtomicBool);

impl Leadership {
    /// Whether this runner is the leader.
    pub(crate) fn is_leader(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Leads or stands by until `cancel` fires or the channel fails.
pub(crate) async fn run(
    client: Client,
    workflow: WorkflowName,
    schedules: Arc<Vec<Schedule>>,
    channel: Channel,
    publisher: Publisher,
    leadership: Arc<Leadership>,
    cancel: CancellationToken,
) -> Result<()> {
    let topology = client.topology().clone();
    let queue = topology.scheduler_queue(&workflow);
    let stored_queue = topology.schedules_queue(&workflow);
    let mut probes = follow(&channel, &queue).await?;
    let mut last_probe: Option<Instant> = None;
    let mut fired: HashMap<String, SystemTime> = HashMap::new();
    let mut probe = tokio::time::interval(PROBE_INTERVAL);
    let mut check = tokio::time::interval(TICK_CHECK);
    let mut refresh = tokio::time::interval(REFRESH_STORED);
    // The schedules in the code, then those stored with `inqubo schedule add`.
    let mut active: Vec<Schedule> = schedules.to_vec();
    let result = loop {
        tokio::select! {
            () = cancel.cancelled() => break Ok(()),
            _ = probe.tick() => {
                // On the publishing connection, which a memory or disk alarm may block,
                // never on this one, which consumes and acknowledges.
                let probe = Wire::new(topology.names(), protocol::scheduler_probe(&workflow), None);
                // Not confirmed: a lost probe only delays leadership by one interval.
                drop(publisher.send(&probe).await?);
            }
            delivery = probes.next() => match delivery {
                Some(Ok(_)) => last_probe = Some(Instant::now()),
                Some(Err(error)) => break Err(error.into()),
                None => break Err(Error::ConsumerStopped { queue: queue.as_str().to_owned() }),
            },
            _ = refresh.tick(), if leadership.is_leader() => {
                match stored(&channel, &stored_queue).await {
                    Ok(found) => {
                        active = schedules.to_vec();
                        for schedule in found {
                            if active.iter().any(|s| s.name() == schedule.name()) {
                                warn!(%workflow, schedule = schedule.name(), "a stored schedule has the name of one in the code; the code's is fired");
                            } else {
                                active.push(schedule);
                            }
                        }
                    }
                    Err(error) => warn!(%workflow, %error, "stored schedules not read; firing the known ones"),
                }
            }
            _ = check.tick() => {
                let leading = last_probe.is_some_and(|at| at.elapsed() < LEASE);
                if leading != leadership.is_leader() {
                    leadership.0.store(leading, Ordering::Relaxed);
                    if leading {
                        info!(%workflow, "this runner fires the workflow's schedules now");
                    } else {
                        // Whoever leads next catches up from its own view of what is due.
                        fired.clear();
                    }
                }
                if leading {
                    fire_due(&client, &workflow, &active, &mut fired).await;
                }
            }
        }
    };
    leadership.0.store(false, Ordering::Relaxed);
    result
}

/// The schedules stored in `queue` (`inqubo schedule add`), read without taking them: each
/// message is taken and given back. One that does not read is skipped with a warning.
async fn stored(channel: &Channel, queue: &QueueName) -> Result<Vec<Schedule>> {
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await?
    {
        taken.push(message.delivery);
    }
    let mut found = Vec::with_capacity(taken.len());
    for delivery in &taken {
        let read = serde_json::from_slice::<ScheduleDefinition>(&delivery.data)
            .map_err(|e| e.to_string())
            .and_then(|d| Schedule::from_definition(&d).map_err(|e| e.to_string()));
        match read {
            Ok(schedule) => found.push(schedule),
            Err(error) => warn!(queue = %queue, %error, "a stored schedule does not read; skipped"),
        }
    }
    if let Some(last) = taken.last() {
        last.nack(BasicNackOptions {
            multiple: true,
            requeue: true,
        })
        .await?;
    }
    Ok(found)
}

/// Declares the scheduler queue and consumes it as a single active consumer (no acks: a probe
/// carries nothing).
async fn follow(channel: &Channel, queue: &QueueName) -> Result<lapin::Consumer> {
    let mut args = FieldTable::default();
    args.insert(
        argument::SINGLE_ACTIVE_CONSUMER.into(),
        AMQPValue::Boolean(true),
    );
    args.insert(
        argument::MAX_LENGTH.into(),
        AMQPValue::LongLongInt(MAX_PROBES),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    Ok(channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?)
}

/// Fires, for each schedule, its latest tick if it is due and not fired yet by this leader
/// (on taking over: only if younger than the schedule's catch-up window).
async fn fire_due(
    client: &Client,
    workflow: &WorkflowName,
    schedules: &[Schedule],
    fired: &mut HashMap<String, SystemTime>,
) {
    let now = SystemTime::now();
    for schedule in schedules {
        let Some(tick) = schedule.latest_tick(now) else {
            continue;
        };
        let due = match fired.get(schedule.name()) {
            Some(last) => tick > *last,
            None => now
                .duration_since(tick)
                .is_ok_and(|late| late <= schedule.catch_up_window()),
        };
        if !due {
            fired.entry(schedule.name().to_owned()).or_insert(tick);
            continue;
        }
        let run_id = schedule.run_id(tick);
        match client
            .trigger_json(workflow, run_id.clone(), schedule.input().to_vec())
            .await
        {
            Ok(_) => {
                info!(%workflow, schedule = schedule.name(), %run_id, "schedule fired");
                fired.insert(schedule.name().to_owned(), tick);
            }
            // Tried again at the next check, with the same run id.
            Err(error) => {
                warn!(%workflow, schedule = schedule.name(), %error, "firing a schedule failed")
            }
        }
    }
}
