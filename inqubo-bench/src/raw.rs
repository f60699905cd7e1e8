//! The baseline: a relay written with plain lapin — consume from one queue, publish to the
//! next with a confirm, then acknowledge — with the same queue type, persistence, message size
//! and prefetch as the runner. This is the physical cost of one workflow hop.

use std::{sync::Arc, time::Instant};

use futures_util::StreamExt;
use inqubo::{
    QueueType,
    protocol::{CONTENT_TYPE, argument},
};
use lapin::{
    BasicProperties, Channel, Connection,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use tokio::sync::Notify;

use crate::Measure;

fn queue_args(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if queue_type == QueueType::Quorum {
        args.insert(
            argument::QUEUE_TYPE.into(),
            AMQPValue::LongString(LongString::from(argument::QUORUM)),
        );
    }
    args
}

async fn declare(channel: &Channel, name: &str, queue_type: QueueType) -> anyhow::Result<()> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::durable(),
            queue_args(queue_type),
        )
        .await?;
    Ok(())
}

fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(CONTENT_TYPE.into())
}

/// Publishes `count` copies of `payload` to `queue`, with confirms, 1,000 in flight at most.
pub(crate) async fn fill(
    channel: &Channel,
    queue: &str,
    payload: &[u8],
    count: usize,
) -> anyhow::Result<()> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .ok();
    let mut pending = Vec::with_capacity(1000);
    for _ in 0..count {
        pending.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    payload,
                    persistent(),
                )
                .await?,
        );
        if pending.len() == 1000 {
            for confirm in pending.drain(..) {
                confirm.await?;
            }
        }
    }
    for confirm in pending {
        confirm.await?;
    }
    Ok(())
}

/// Relays every message of `from` to `to` until `cancel`: publish with a confirm, then ack.
async fn relay(
    connection: &Connection,
    from: String,
    to: String,
    prefetch: u16,
) -> anyhow::Result<()> {
    relay_with(connection, from, to, prefetch, None).await
}

/// A relay that also publishes, for every message, `extra.1` more messages to queue `extra.0`
/// (confirmed with the forward one, before the ack): a relay that writes as many messages per
/// hop as a runner does.
async fn relay_with(
    connection: &Connection,
    from: String,
    to: String,
    prefetch: u16,
    extra: Option<(String, usize)>,
) -> anyhow::Result<()> {
    let consume = connection.create_channel().await?;
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            from.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let publish = publish.clone();
            let to = to.clone();
            let extra = extra.clone();
            tokio::spawn(async move {
                let (sink, copies) = extra.unwrap_or_default();
                let mut confirms = Vec::with_capacity(copies + 1);
                for (queue, _) in std::iter::once((&to, ())).chain((0..copies).map(|_| (&sink, ())))
                {
                    let sent = publish
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &delivery.data,
                            persistent(),
                        )
                        .await;
                    match sent {
                        Ok(confirm) => confirms.push(confirm),
                        Err(_) => return,
                    }
                }
                for confirm in confirms {
                    if confirm.await.is_err() {
                        return;
                    }
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            });
        }
    });
    Ok(())
}

/// Counts messages arriving in `queue` (auto-ack) and notifies when `expected` arrived.
async fn count_into(
    connection: &Connection,
    queue: &str,
    expected: usize,
    done: Arc<Notify>,
    arrivals: Option<tokio::sync::mpsc::UnboundedSender<Instant>>,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        let mut seen = 0;
        while let Some(Ok(_)) = consumer.next().await {
            seen += 1;
            if let Some(arrivals) = &arrivals {
                let _ = arrivals.send(Instant::now());
            }
            if seen == expected {
                done.notify_one();
            }
        }
        let _channel = channel;
    });
    Ok(())
}

/// Relay throughput: `count` messages queued in A, relayed to B; hops per second.
pub(crate) async fn hop(
    url: &str,
    queue_type: QueueType,
    prefetch: u16,
    payload: &[u8],
    count: usize,
) -> anyhow::Result<Measure> {
    let connection = Connection::connect(url, Default::default()).await?;
    let setup = connection.create_channel().await?;
    let tag = format!("bench-raw-{:08x}", rand::random::<u32>());
    let (a, b) = (format!("{tag}.a"), format!("{tag}.b"));
    declare(&setup, &a, queue_type).await?;
    declare(&setup, &b, queue_type).await?;
    fill(&setup, &a, payload, count).await?;
    let done = Arc::new(Notify::new());
    count_into(&connection, &b, count, Arc::clone(&done), None).await?;
    let start = Instant::now();
    relay(&connection, a.clone(), b.clone(), prefetch).await?;
    done.notified().await;
    let elapsed = start.elapsed();
    for queue in [a, b] {
        setup
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(Measure::throughput(count, elapsed))
}

/// Latency through a chain of `hops` relays, one message at a time: per-hop p50 and p99.
pub(crate) async fn latency(
    url: &str,
    queue_type: QueueType,
    payload: &[u8],
    hops: usize,
    runs: usize,
) -> anyhow::Result<Measure> {
    let connection = Connection::connect(url, Default::default()).await?;
    let setup = connection.create_channel().await?;
    setup
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let tag = format!("bench-raw-{:08x}", rand::random::<u32>());
    let queues: Vec<String> = (0..=hops).map(|i| format!("{tag}.{i}")).collect();
    for queue in &queues {
        declare(&setup, queue, queue_type).await?;
    }
    for pair in queues.windows(2) {
        relay(&connection, pair[0].clone(), pair[1].clone(), 100).await?;
    }
    let (sender, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    count_into(
        &connection,
        &queues[hops],
        usize::MAX,
        Arc::new(Notify::new()),
        Some(sender),
    )
    .await?;
    let mut per_hop = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        setup
            .basic_publish(
                "".into(),
                queues[0].as_str().into(),
                BasicPublishOptions::default(),
                payload,
                persistent(),
            )
            .await?
            .await?;
        let Some(arrived) = arrivals.recv().await else {
            anyhow::bail!("latency consumer stopped");
        };
        per_hop.push((arrived - start) / hops as u32);
    }
    for queue in &queues {
        setup
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(Measure::latency(per_hop))
}

/// The protocol-equal baseline of a workflow of `hops` steps in a chain: `count` messages
/// relayed through `hops` queues, each hop publishing `per_hop` messages in all (the forward
/// one and `per_hop - 1` copies to a sink a consumer drains) with confirms before its ack.
/// Hops per second.
pub(crate) async fn chain_writing(
    url: &str,
    queue_type: QueueType,
    prefetch: u16,
    payload: &[u8],
    count: usize,
    hops: usize,
    per_hop: usize,
) -> anyhow::Result<Measure> {
    let connection = Connection::connect(url, Default::default()).await?;
    let setup = connection.create_channel().await?;
    let tag = format!("bench-raw-{:08x}", rand::random::<u32>());
    let queues: Vec<String> = (0..=hops).map(|i| format!("{tag}.q{i}")).collect();
    let sink = format!("{tag}.sink");
    for queue in queues.iter().chain(std::iter::once(&sink)) {
        declare(&setup, queue, queue_type).await?;
    }
    fill(&setup, &queues[0], payload, count).await?;
    let done = Arc::new(Notify::new());
    count_into(&connection, &queues[hops], count, Arc::clone(&done), None).await?;
    count_into(
        &connection,
        &sink,
        usize::MAX,
        Arc::new(Notify::new()),
        None,
    )
    .await?;
    let start = Instant::now();
    for pair in queues.windows(2) {
        let extra = Some((sink.clone(), per_hop.saturating_sub(1)));
        relay_with(
            &connection,
            pair[0].clone(),
            pair[1].clone(),
            prefetch,
            extra,
        )
        .await?;
    }
    done.notified().await;
    let elapsed = start.elapsed();
    for queue in queues.iter().chain(std::iter::once(&sink)) {
        setup
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(Measure::throughput(count * hops, elapsed))
}
