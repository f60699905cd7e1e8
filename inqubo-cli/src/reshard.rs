//! `inqubo topology reshard <workflow> --join-shards <n>`: raises how many shards each join of
//! a workflow has, with its runners stopped, so that join work spreads over more runners.
//!
//! Pieces are routed by their run's slot (one of 64), and shard `k` of `n` takes the slots
//! `s % n == k`; raising `n` sends some slots to new shards. Each open join moves with its
//! slot:
//!
//! 1. every old shard's book is rebuilt from its journal, as a new owner would;
//! 2. the books are split by where each run's slot now points, each part in an epoch above
//!    every version found;
//! 3. the new shards' journals get their part (a snapshot), then the new shard queues are
//!    declared and bound to their slots, the old queues unbound from the slots they gave
//!    up: from then on runners (which count the shard queues when they connect) use the new
//!    count;
//! 4. the old shards' journals get their part, and the records before it are trimmed.
//!
//! A piece still waiting in an old shard's queue for a run that moved is sent on by the runner
//! that takes it (`join-forwarded`). If the command stops half-way before step 3, nothing
//! changed for runners and it can run again; after it, the old shards may keep stale copies of
//! runs that moved (they never fire: those runs' pieces go to their new shard).

use inqubo::{
    JoinShape, StepName, WorkflowDefinition, WorkflowName,
    join::{JoinBook, JoinTarget, RunMemory},
    journal::{self, Record, RecordKind},
    protocol::{
        JOIN_SLOTS, Names, RUN_JOIN,
        wire::{self, Wire},
    },
};
use lapin::{
    Channel,
    options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueuePurgeOptions,
    },
    types::FieldTable,
};
use serde_json::json;

use crate::{
    EXIT_NOTHING_CHANGED,
    broker::{Context, ask, give_back, take_all},
    topology::join_shards,
    workflows::{announced_workflow, queues_stats},
};

/// What a join waits for, from the announced definition: enough to replay its journal.
enum Wants {
    /// The run join: every last step.
    Run(Vec<StepName>),
    /// A join step: its parents (flat; the nesting of the input tuple only shapes a fired
    /// input, which a replay throws away).
    Step(JoinShape),
}

impl Wants {
    fn target(&self) -> JoinTarget<'_> {
        match self {
            Wants::Run(leaves) => JoinTarget::Run(leaves),
            Wants::Step(shape) => JoinTarget::Step(shape),
        }
    }
}

/// The joins of `definition`: every join step (several parents, or a map's collector) and the
/// run join.
fn joins_of(definition: &WorkflowDefinition) -> Vec<(String, Wants)> {
    let is_map = |name: &StepName| definition.steps.iter().any(|s| s.map && s.name == *name);
    let mut joins: Vec<(String, Wants)> = definition
        .steps
        .iter()
        .filter(|s| s.parents.len() > 1 || s.parents.iter().any(is_map))
        .map(|s| {
            let shape = match s.parents.as_slice() {
                [one] => JoinShape::Step(one.clone()),
                many => JoinShape::Tuple(many.iter().cloned().map(JoinShape::Step).collect()),
            };
            (s.name.to_string(), Wants::Step(shape))
        })
        .collect();
    let leaves = definition
        .steps
        .iter()
        .filter(|s| !definition.edges.iter().any(|e| e.from == s.name))
        .map(|s| s.name.clone())
        .collect();
    joins.push((RUN_JOIN.to_owned(), Wants::Run(leaves)));
    joins
}

/// The book of shard `shard` of `join`, rebuilt from its former state queue and its journal,
/// and the highest epoch found there.
async fn rebuild(
    channel: &Channel,
    context: &Context,
    workflow: &WorkflowName,
    join: &str,
    shard: u32,
    wants: &Wants,
) -> anyhow::Result<(JoinBook, u64)> {
    let topology = context.topology()?;
    let legacy = take_all(
        channel,
        topology.join_state_queue(workflow, join, shard).as_str(),
    )
    .await?;
    let (base, legacy_epoch, _) = JoinBook::newest_found(legacy.iter().map(|d| d.data.as_slice()));
    give_back(&legacy).await?;
    let journal_queue = topology.join_journal_queue(workflow, join, shard);
    let taken = take_all(channel, journal_queue.as_str()).await?;
    let records: Vec<Record> = taken
        .iter()
        .filter_map(|d| Record::from_incoming(&wire::incoming(d)))
        .collect();
    give_back(&taken).await?;
    let top = records
        .iter()
        .map(|r| r.version.0)
        .fold(legacy_epoch, u64::max);
    let memory = RunMemory::default();
    let (book, _) = journal::rebuild(
        base.unwrap_or_default(),
        records,
        |book, now_ms| book.tick(now_ms, memory),
        |book, run, piece| {
            book.add(run, piece, wants.target());
        },
    );
    let epoch = top.max(book.version().0);
    Ok((book, epoch))
}

/// Publishes `book` as a snapshot to the journal of shard `shard` of `join`, and waits for
/// the confirms.
async fn write_snapshot(
    channel: &Channel,
    context: &Context,
    workflow: &WorkflowName,
    join: &str,
    shard: u32,
    book: &JoinBook,
) -> anyhow::Result<()> {
    let topology = context.topology()?;
    let bytes = book.snapshot_at_version();
    let parts = journal::snapshot_parts(&bytes);
    let count = u32::try_from(parts.len())?;
    for (part, index) in parts.iter().zip(0..) {
        let record = inqubo::protocol::journal_record(
            workflow,
            join,
            shard,
            RecordKind::Snapshot {
                part: index,
                parts: count,
            },
            book.version(),
            part.to_vec(),
        );
        let out = Wire::new(topology.names(), record, None);
        channel
            .basic_publish(
                out.exchange.as_str().into(),
                out.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &out.body,
                out.properties,
            )
            .await?
            .await?;
    }
    Ok(())
}

/// Acknowledges the records at the head of `queue` older than `version` (a snapshot this
/// command wrote at its tail), stopping at the first that is not.
async fn trim_before(channel: &Channel, queue: &str, version: (u64, u64)) -> anyhow::Result<usize> {
    let mut trimmed = 0;
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await?
    {
        let delivery = message.delivery;
        let older = Record::from_incoming(&wire::incoming(&delivery))
            .is_none_or(|record| record.version < version);
        if older {
            delivery.ack(BasicAckOptions::default()).await?;
            trimmed += 1;
        } else {
            give_back(std::slice::from_ref(&delivery)).await?;
            break;
        }
    }
    Ok(trimmed)
}

/// Raises the join shards of `workflow` to `shards`; see the module documentation.
pub(crate) async fn reshard(
    context: &Context,
    workflow: &str,
    shards: u32,
    yes: bool,
) -> anyhow::Result<i32> {
    let topology = context.topology()?;
    let definition = &announced_workflow(context, workflow).await?;
    let name: WorkflowName = workflow.parse()?;
    anyhow::ensure!(
        (1..=JOIN_SLOTS).contains(&shards),
        "a join has 1 to {JOIN_SLOTS} shards (one per routing slot at most), not {shards}"
    );
    let old = join_shards(context, workflow).await?;
    if shards == old {
        eprintln!("the joins of `{workflow}` already have {old} shards; nothing changed");
        return Ok(EXIT_NOTHING_CHANGED);
    }
    anyhow::ensure!(
        shards > old,
        "the joins of `{workflow}` have {old} shards; lowering the count is not supported"
    );
    let queues = topology.workflow_queues(definition, old);
    let names: Vec<&str> = queues.iter().map(|(q, _)| q.as_str()).collect();
    let stats = queues_stats(context, &names).await?;
    if let Some((queue, _)) = names
        .iter()
        .zip(&stats)
        .find(|(_, stats)| stats.is_some_and(|(_, consumers)| consumers > 0))
    {
        anyhow::bail!(
            "runners still consume the queues of `{workflow}` (e.g. {queue}); stop every runner \
             of the workflow first: a shard must not change owner while it moves"
        );
    }
    let joins = joins_of(definition);
    if !yes {
        let question = format!(
            "raise the {} join(s) of `{workflow}` under prefix `{}` from {old} to {shards} shards?",
            joins.len(),
            context.prefix
        );
        if !ask(&question)? {
            eprintln!("nothing changed");
            return Ok(EXIT_NOTHING_CHANGED);
        }
    }
    let (connection, channel) = context.channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut report = Vec::new();
    for (join, wants) in &joins {
        // 1. The old books, as their next owners would rebuild them.
        let mut top_epoch = 0;
        let mut new_books = vec![JoinBook::new(); shards as usize];
        let mut pending = 0;
        for shard in 0..old {
            let (book, epoch) = rebuild(&channel, context, &name, join, shard, wants).await?;
            top_epoch = top_epoch.max(epoch);
            pending += book.pending_runs();
            // 2. Each run to the shard its slot now points to.
            book.split_into(&mut new_books, |run| {
                Names::join_shard(run.as_str(), shards) as usize
            });
        }
        for book in &mut new_books {
            book.take_over(top_epoch);
        }
        // 3. The new shards: their journals first, then their queues and slots.
        for shard in old..shards {
            topology
                .declare_join_journal(&channel, &name, join, shard)
                .await?;
            // Whatever an interrupted earlier attempt left there is not a state of anything.
            channel
                .queue_purge(
                    topology
                        .join_journal_queue(&name, join, shard)
                        .as_str()
                        .into(),
                    QueuePurgeOptions::default(),
                )
                .await?;
            write_snapshot(
                &channel,
                context,
                &name,
                join,
                shard,
                &new_books[shard as usize],
            )
            .await?;
        }
        // Highest first: a runner counting shards sees the new count only once all exist.
        for shard in (0..shards).rev() {
            topology
                .declare_join_shard(&channel, &name, join, shard, shards)
                .await?;
        }
        for shard in 0..old {
            let queue = topology.join_queue(&name, join, shard);
            for slot in Names::shard_slots(shard, old).filter(|s| s % shards != shard) {
                channel
                    .queue_unbind(
                        queue.as_str().into(),
                        topology.join_exchange().as_str().into(),
                        Names::join_key(&name, join, slot).as_str().into(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        // 4. The old shards keep their own runs, from a snapshot above their records.
        let mut trimmed = 0;
        for shard in 0..old {
            let book = &new_books[shard as usize];
            write_snapshot(&channel, context, &name, join, shard, book).await?;
            let journal = topology.join_journal_queue(&name, join, shard);
            trimmed += trim_before(&channel, journal.as_str(), book.version()).await?;
        }
        let moved: Vec<usize> = new_books.iter().map(JoinBook::pending_runs).collect();
        report.push(json!({
            "join": join, "from": old, "to": shards, "open_joins": pending,
            "open_joins_per_shard": moved, "journal_records_trimmed": trimmed,
        }));
    }
    let _ = connection.close(200, "done".into()).await;
    if context.json {
        println!("{}", json!({"workflow": workflow, "joins": report}));
    } else {
        for join in &report {
            println!(
                "join {} of `{workflow}`: {} -> {} shards, {} open join(s) now per shard {}",
                join["join"].as_str().unwrap_or_default(),
                old,
                shards,
                join["open_joins"],
                join["open_joins_per_shard"]
            );
        }
        println!("start the runners again: they count the shards when they connect");
    }
    Ok(0)
}
