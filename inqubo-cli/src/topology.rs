//! `inqubo topology`: the queues Inqubo declared under a prefix, what each is for, and how to
//! remove one workflow's.

use anyhow::Context as _;
use lapin::options::QueueDeleteOptions;
use serde_json::json;

use crate::{
    broker::Context,
    workflows::{announced, announced_workflow, queues_stats},
};

/// One queue as the command shows it.
struct Row {
    queue: String,
    purpose: String,
    /// Messages and consumers; `None` when the queue does not exist.
    stats: Option<(u32, u32)>,
}

/// How many shards the joins of `workflow` have on the broker.
pub(crate) async fn join_shards(context: &Context, workflow: &str) -> anyhow::Result<u32> {
    let (connection, _) = context.channel().await?;
    let shards = context
        .topology()?
        .join_shards(&connection, &workflow.parse()?)
        .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(shards)
}

/// The queues of `workflow` (or of every announced workflow), then the shared ones.
pub(crate) async fn show(context: &Context, workflow: Option<&str>) -> anyhow::Result<()> {
    let topology = context.topology()?;
    let workflows = announced(context).await?;
    let mut groups = Vec::new();
    for (name, definition) in &workflows {
        if workflow.is_some_and(|w| w != name) {
            continue;
        }
        let shards = join_shards(context, name).await?;
        groups.push((name.clone(), topology.workflow_queues(definition, shards)));
    }
    if let Some(wanted) = workflow {
        anyhow::ensure!(
            !groups.is_empty(),
            "no runner announced workflow `{wanted}` under prefix `{}`",
            context.prefix
        );
    }
    groups.push(("(shared)".to_owned(), topology.shared_queues()));
    let mut out = Vec::new();
    for (group, queues) in groups {
        let names: Vec<&str> = queues.iter().map(|(q, _)| q.as_str()).collect();
        let stats = queues_stats(context, &names).await?;
        let rows = queues
            .into_iter()
            .zip(stats)
            .map(|((queue, purpose), stats)| Row {
                queue: queue.as_str().to_owned(),
                purpose,
                stats,
            })
            .collect::<Vec<_>>();
        out.push((group, rows));
    }
    if context.json {
        let groups: Vec<_> = out
            .iter()
            .map(|(group, rows)| {
                json!({
                    "workflow": group,
                    "queues": rows.iter().map(|r| json!({
                        "queue": r.queue,
                        "purpose": r.purpose,
                        "exists": r.stats.is_some(),
                        "messages": r.stats.map(|s| s.0),
                        "consumers": r.stats.map(|s| s.1),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(groups));
        return Ok(());
    }
    println!(
        "exchanges: {} (events, topic), {} (retries), {} (join pieces), {}.delay.0-24 (retry delays)",
        topology.exchange(),
        topology.retry_exchange(),
        topology.join_exchange(),
        context.prefix
    );
    for (group, rows) in out {
        println!("\n{group}");
        for row in rows {
            let stats = match row.stats {
                Some((messages, consumers)) => format!("{messages:>7} msgs {consumers:>3} cons"),
                None => format!("{:>20}", "(absent)"),
            };
            println!("  {:<48} {stats}  {}", row.queue, row.purpose);
        }
    }
    Ok(())
}

/// Deletes `workflow`'s own queues (messages included) after asking, unless `yes`; refuses
/// while a runner consumes them, unless `force`. Shared queues and exchanges stay.
pub(crate) async fn delete(
    context: &Context,
    workflow: &str,
    yes: bool,
    force: bool,
) -> anyhow::Result<i32> {
    let topology = context.topology()?;
    let definition = &announced_workflow(context, workflow).await?;
    let shards = join_shards(context, workflow).await?;
    let queues = topology.workflow_queues(definition, shards);
    let names: Vec<&str> = queues.iter().map(|(q, _)| q.as_str()).collect();
    let stats = queues_stats(context, &names).await?;
    let present: Vec<(&str, u32, u32)> = names
        .iter()
        .zip(&stats)
        .filter_map(|(name, stats)| stats.map(|(m, c)| (*name, m, c)))
        .collect();
    let consumed: Vec<&str> = present
        .iter()
        .filter(|(_, _, consumers)| *consumers > 0)
        .map(|(name, _, _)| *name)
        .collect();
    if !consumed.is_empty() && !force {
        anyhow::bail!(
            "runners still consume {} queue(s) of `{workflow}` (e.g. {}); stop them first, or \
             pass --force",
            consumed.len(),
            consumed[0]
        );
    }
    let messages: u64 = present.iter().map(|(_, m, _)| u64::from(*m)).sum();
    if !yes {
        let question = format!(
            "delete {} queue(s) of workflow `{workflow}` under prefix `{}`, with the {messages} \
             message(s) they hold (parked inputs included)?",
            present.len(),
            context.prefix
        );
        if !crate::broker::ask(&question)? {
            eprintln!("nothing deleted");
            return Ok(crate::EXIT_NOTHING_CHANGED);
        }
    }
    let (connection, channel) = context.channel().await?;
    for (name, _, _) in &present {
        channel
            .queue_delete((*name).into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting queue {name}"))?;
    }
    let _ = connection.close(200, "done".into()).await;
    if context.json {
        println!(
            "{}",
            json!({"workflow": workflow, "deleted": present.iter().map(|p| p.0).collect::<Vec<_>>(), "messages": messages})
        );
    } else {
        println!(
            "deleted {} queue(s) of `{workflow}` ({messages} message(s)); its announcement stays \
             in the registry until newer ones push it out",
            present.len()
        );
    }
    Ok(0)
}
