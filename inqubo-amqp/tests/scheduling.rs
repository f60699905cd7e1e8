//! Cron schedules on the real broker: one runner of several fires each tick, once; when it
//! stops, another takes over and no tick runs twice.

use std::collections::BTreeMap;

use inqubo_amqp::Runner;
use inqubo_core::{EventKind, Step, StepContext, StepError, Workflow, schedule::Schedule};
use inqubo_testkit::{Events, TestBroker};

async fn stamp(_: (), ctx: StepContext) -> Result<String, StepError> {
    Ok(ctx.run_id.to_string())
}

fn ticking() -> Workflow {
    Workflow::builder("ticking")
        .start(Step::new("stamp", stamp))
        .build()
        .unwrap()
}

/// The ticks that ended so far: run id → how many `run.succeeded` it had.
fn ended(events: &Events) -> BTreeMap<String, usize> {
    let mut ends = BTreeMap::new();
    for event in events.seen() {
        if event.kind == EventKind::RunSucceeded
            && event.run_id.as_str().starts_with("every-second@")
        {
            *ends.entry(event.run_id.to_string()).or_default() += 1;
        }
    }
    ends
}

async fn start(broker: &TestBroker) -> Runner {
    broker
        .runner(&ticking())
        .schedule(Schedule::cron("every-second", "* * * * * *").unwrap())
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_runners_fire_each_tick_once_and_another_leads_when_the_leader_stops() {
    let broker = TestBroker::new();
    let mut runners = vec![
        start(&broker).await,
        start(&broker).await,
        start(&broker).await,
    ];
    // On a connection of its own: the leader's goes with it.
    let observer = broker.client().await;
    let mut events = Events::subscribe_to(&observer, Some(ticking().name())).await;

    // Ten ticks.
    events
        .until(|seen| {
            seen.iter()
                .filter(|e| e.kind == EventKind::RunSucceeded)
                .count()
                >= 10
        })
        .await;
    let leaders: Vec<usize> = (0..runners.len())
        .filter(|i| runners[*i].leads_schedules())
        .collect();
    assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
    let first_ends = ended(&events);
    assert!(
        first_ends.values().all(|n| *n == 1),
        "a tick ran twice: {first_ends:?}"
    );

    // The leader stops; another takes over within the lease, and no tick runs twice.
    let leader = runners.remove(leaders[0]);
    leader.shutdown().await.unwrap();
    let before = first_ends.len();
    events
        .until(|seen| {
            seen.iter()
                .filter(|e| e.kind == EventKind::RunSucceeded)
                .count()
                >= before + 5
        })
        .await;
    let ends = ended(&events);
    assert!(ends.values().all(|n| *n == 1), "a tick ran twice: {ends:?}");
    assert_eq!(
        runners.iter().filter(|r| r.leads_schedules()).count(),
        1,
        "one of the two left leads"
    );
    // Consecutive seconds, but for at most the lease's worth skipped at the change.
    let ticks: Vec<i64> = ends
        .keys()
        .map(|id| {
            let at = id.trim_start_matches("every-second@");
            let at = humantime::parse_rfc3339(at).unwrap();
            let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            i64::try_from(secs).unwrap()
        })
        .collect();
    let gaps: Vec<i64> = ticks
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|gap| *gap > 1)
        .collect();
    assert!(
        gaps.len() <= 1 && gaps.iter().all(|gap| *gap <= 4),
        "ticks {ticks:?}"
    );
    for runner in runners {
        runner.shutdown().await.unwrap();
    }
}
