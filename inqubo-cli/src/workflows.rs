//! `inqubo workflows` and `inqubo show`: what runners announced in the registry queue.

use std::collections::BTreeMap;

use anyhow::Context as _;
use inqubo::WorkflowDefinition;
use lapin::{
    Channel,
    options::{BasicGetOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::json;

use crate::broker::Context;

/// Depth and consumer count of a queue, or `None` if it does not exist.
pub(crate) async fn queue_stats(
    context: &Context,
    queue: &str,
) -> anyhow::Result<Option<(u32, u32)>> {
    Ok(queues_stats(context, &[queue]).await?.pop().flatten())
}

/// Depth and consumer count of each queue (`None` for a missing one), over one connection.
pub(crate) async fn queues_stats(
    context: &Context,
    queues: &[&str],
) -> anyhow::Result<Vec<Option<(u32, u32)>>> {
    let (connection, _) = context.channel().await?;
    let mut stats = Vec::with_capacity(queues.len());
    for queue in queues {
        // A passive declare of a missing queue closes its channel: one channel per queue.
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                (*queue).into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        stats.push(
            declared
                .ok()
                .map(|q| (q.message_count(), q.consumer_count())),
        );
        let _ = channel.close(200, "done".into()).await;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(stats)
}

/// Every announced workflow, the latest announcement of each.
pub(crate) async fn announced(
    context: &Context,
) -> anyhow::Result<BTreeMap<String, WorkflowDefinition>> {
    let topology = context.topology()?;
    let registry = topology.registry_queue();
    if queue_stats(context, registry.as_str()).await?.is_none() {
        return Ok(BTreeMap::new());
    }
    let (connection, channel) = context.channel().await?;
    // Until the queue has nothing left to hand out: the count a declaration reports can lag
    // behind an announcement just confirmed. The registry holds at most 1,000.
    let definitions = read_all(&channel, registry.as_str(), REGISTRY_MAX).await;
    // Closing the channel without acknowledging returns every announcement to the registry.
    let _ = connection.close(200, "read".into()).await;
    definitions
}

/// The announced definition of `workflow`; an error that says so when no runner announced it.
pub(crate) async fn announced_workflow(
    context: &Context,
    workflow: &str,
) -> anyhow::Result<WorkflowDefinition> {
    announced(context).await?.remove(workflow).with_context(|| {
        format!(
            "no runner announced workflow `{workflow}` under prefix `{}`",
            context.prefix
        )
    })
}

/// The most announcements the registry keeps (its `x-max-length`).
const REGISTRY_MAX: u32 = 1000;

async fn read_all(
    channel: &Channel,
    queue: &str,
    count: u32,
) -> anyhow::Result<BTreeMap<String, WorkflowDefinition>> {
    let mut latest = BTreeMap::new();
    for _ in 0..count {
        let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        else {
            break;
        };
        if let Ok(definition) = serde_json::from_slice::<WorkflowDefinition>(&message.delivery.data)
        {
            latest.insert(definition.name.to_string(), definition);
        }
    }
    Ok(latest)
}

pub(crate) async fn list(context: &Context) -> anyhow::Result<()> {
    let topology = context.topology()?;
    let workflows = announced(context).await?;
    let mut rows = Vec::new();
    for (name, definition) in &workflows {
        let mut steps = Vec::new();
        for step in &definition.steps {
            let queue = topology.step_queue(&definition.name, &step.name);
            let stats = queue_stats(context, queue.as_str()).await?;
            steps.push(json!({
                "step": step.name,
                "queue": queue.as_str(),
                "depth": stats.map(|s| s.0),
                "consumers": stats.map(|s| s.1),
            }));
        }
        rows.push(json!({"workflow": name, "steps": steps}));
    }
    if context.json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no workflow announced under prefix `{}` (start a runner first)",
            context.prefix
        );
        return Ok(());
    }
    for row in rows {
        println!("{}", row["workflow"].as_str().unwrap_or_default());
        for step in row["steps"].as_array().into_iter().flatten() {
            let show = |v: &serde_json::Value| v.as_u64().map_or("-".to_owned(), |n| n.to_string());
            println!(
                "  {:<32} depth {:>6}  consumers {:>3}",
                step["step"].as_str().unwrap_or_default(),
                show(&step["depth"]),
                show(&step["consumers"])
            );
        }
    }
    Ok(())
}

pub(crate) async fn show(context: &Context, workflow: &str, dot: bool) -> anyhow::Result<()> {
    let definition = &announced_workflow(context, workflow).await?;
    if context.json {
        println!("{}", serde_json::to_string_pretty(definition)?);
    } else if dot {
        println!("digraph \"{}\" {{", definition.name);
        println!("  rankdir=LR;");
        for step in &definition.steps {
            println!("  \"{}\";", step.name);
            if step.parents.is_empty() {
                println!("  \"trigger\" -> \"{}\";", step.name);
            }
        }
        for edge in &definition.edges {
            println!("  \"{}\" -> \"{}\";", edge.from, edge.to);
        }
        println!("}}");
    } else {
        println!("workflow {}", definition.name);
        for step in &definition.steps {
            let after = if step.parents.is_empty() {
                "the trigger".to_owned()
            } else {
                step.parents
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            println!(
                "  {:<28} after {:<30} retry {}",
                step.name.as_str(),
                after,
                serde_json::to_string(&step.retry)?
            );
        }
    }
    Ok(())
}
