//! Cancelling and resuming runs: what an operator does to a run from outside.
//!
//! Both go through RabbitMQ alone. A cancel is a request to the run's run join — the one
//! place that decides how a run ends — which answers on a queue of the caller's. A resume takes
//! the run's inputs out of the workflow's parked queue and sends them back to their steps as
//! the next attempts, in the run's next generation.

use std::time::Duration;

use futures_util::StreamExt;
use inqubo_core::{
    RunId, WorkflowName,
    protocol::{self, CancelReply, Incoming},
};
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions},
};
use tracing::{info, instrument};

use crate::{
    client::{Client, private_queue},
    error::{Error, Result},
    wire::{self, Wire},
};

/// The most parked messages a resume looks through for the run's inputs.
pub const RESUME_SCAN_LIMIT: usize = 100_000;

/// How long a resume waits, once it has published `run.resumed`, before it reads the parked
/// queue again: time for every runner to hear of the resume, and for an input a runner
/// parked just before to arrive.
pub const RESUME_SETTLE: Duration = Duration::from_millis(300);

/// How long a resume waits for the broker to confirm the inputs it sends back; past it the
/// resume gives up and every parked message stays where it was.
pub const RESUME_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// What a resume sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resumed {
    /// The run's new generation.
    pub generation: u32,
    /// How many parked inputs went back to their steps.
    pub inputs: usize,
}

impl Client {
    /// Cancels run `run_id` of `workflow`: its steps not started yet are not started (their
    /// inputs are parked as `run_cancelled`), running ones are told through
    /// [`StepContext::cancelled`](inqubo_core::StepContext::cancelled), and the run ends with
    /// `<workflow>.run.cancelled`. A run cancelled before it was triggered never runs.
    ///
    /// Returns once the run's run join answered. Fails with [`Error::CancelRefused`] if the
    /// run had already ended, and with [`Error::CancelUnanswered`] if no runner answered
    /// within `timeout` (the request stays queued and takes effect when one does).
    #[instrument(skip_all, fields(%workflow, %run_id))]
    pub async fn cancel(
        &self,
        workflow: &WorkflowName,
        run_id: &RunId,
        reason: &str,
        timeout: Duration,
    ) -> Result<()> {
        let session = self.session().await?;
        let channel = session.channel().await?;
        let (replies, mut answers) = private_queue(&channel).await?;
        let request = protocol::cancel_request(workflow, run_id, reason, Some(replies.as_str()));
        let request = Wire::new(self.topology().names(), request, None);
        session.publisher.send(&request).await?.wait().await?;
        let answer = async {
            while let Some(delivery) = answers.next().await {
                let delivery = delivery?;
                let incoming = wire::incoming(&delivery);
                if incoming.run_id().ok().as_ref() != Some(run_id) {
                    continue;
                }
                return serde_json::from_slice::<CancelReply>(&delivery.data).map_err(|source| {
                    Error::Decode {
                        what: "the answer to a cancel request",
                        source,
                    }
                });
            }
            Err(Error::EventStreamEnded)
        };
        let reply = tokio::time::timeout(timeout, answer).await;
        let _ = channel.close(200, "answered".into()).await;
        match reply {
            Err(_) => Err(Error::CancelUnanswered {
                run_id: run_id.to_string(),
                timeout,
            }),
            Ok(Err(error)) => Err(error),
            Ok(Ok(CancelReply::Refused { ended })) => Err(Error::CancelRefused {
                run_id: run_id.to_string(),
                ended,
            }),
            Ok(Ok(_cancelled)) => {
                info!("run cancelled");
                Ok(())
            }
        }
    }

    /// Resumes failed run `run_id` of `workflow`: each of its parked inputs goes back to its
    /// step as the next attempt (attempt numbers continue), in the run's next generation; its
    /// joins take them, and the run ends again with a fresh terminal event. Inputs of other
    /// runs stay parked, where they were.
    ///
    /// First `<workflow>.run.resumed` is published, so that every runner runs an input of
    /// the run's older generation that reaches it from now on (a sibling redelivered after its
    /// runner died) in the new generation instead of parking it; then, after
    /// [`RESUME_SETTLE`], the parked queue is read again for inputs parked in the meantime.
    /// Each input is taken out of the parked queue only after the broker confirmed it back
    /// in its step's queue. Fails with [`Error::NothingToResume`] if the run has no parked
    /// input that can go back.
    #[instrument(skip_all, fields(%workflow, %run_id))]
    pub async fn resume(&self, workflow: &WorkflowName, run_id: &RunId) -> Result<Resumed> {
        let session = self.session().await?;
        let channel = session.channel().await?;
        let queue = self.topology().parked_queue(workflow);
        let mut taken: Vec<Delivery> = Vec::new();
        take_parked(&channel, queue.as_str(), &mut taken).await?;
        let of_run = |d: &Delivery| wire::incoming(d).run_id().ok().as_ref() == Some(run_id);
        let (generation, found) = {
            let parked: Vec<Incoming<'_>> = taken
                .iter()
                .filter(|d| of_run(d))
                .map(wire::incoming)
                .collect();
            let generation = protocol::next_generation(&parked);
            let found = parked
                .iter()
                .filter(|p| protocol::resume(workflow, p, generation).is_some())
                .count();
            (generation, found)
        };
        let mut sent: Vec<usize> = Vec::new();
        let result = if found == 0 {
            Err(Error::NothingToResume {
                run_id: run_id.to_string(),
            })
        } else {
            // Bounded: the parked queue's messages are held until this returns, so a broker
            // that blocks publishers (a disk or memory alarm) must not hold them for ever,
            // hiding them from every other resume.
            let send_back = async {
                let announce = protocol::run_resumed(workflow, run_id, generation, found);
                let announce = Wire::new(self.topology().names(), announce, None);
                session.publisher.send(&announce).await?.wait().await?;
                tokio::time::sleep(RESUME_SETTLE).await;
                take_parked(&channel, queue.as_str(), &mut taken).await?;
                let mut wires = Vec::new();
                for (index, delivery) in taken.iter().enumerate().filter(|(_, d)| of_run(d)) {
                    let parked = wire::incoming(delivery);
                    if let Some(message) = protocol::resume(workflow, &parked, generation) {
                        let received = delivery.properties.headers().as_ref();
                        wires.push(Wire::new(self.topology().names(), message, received));
                        sent.push(index);
                    }
                }
                session.publisher.send_all(wires).await
            };
            match tokio::time::timeout(RESUME_CONFIRM_TIMEOUT, send_back).await {
                Ok(sent_back) => sent_back.map(|()| Resumed {
                    generation,
                    inputs: sent.len(),
                }),
                Err(_) => Err(Error::ResumeTimeout {
                    run_id: run_id.to_string(),
                    timeout: RESUME_CONFIRM_TIMEOUT,
                }),
            }
        };
        // Confirmed back in their steps' queues: the parked copies go. Everything else goes
        // back where it was, one by one in queue order.
        let resumed = result.is_ok();
        for (index, delivery) in taken.iter().enumerate() {
            if resumed && sent.contains(&index) {
                delivery.ack(BasicAckOptions::default()).await?;
            } else {
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await?;
            }
        }
        let _ = channel.close(200, "resumed".into()).await;
        if let Ok(resumed) = &result {
            info!(
                generation = resumed.generation,
                inputs = resumed.inputs,
                "run resumed"
            );
        }
        result
    }
}

/// Takes messages from the parked queue `queue` without acknowledging them, until it is empty
/// or [`RESUME_SCAN_LIMIT`] are held.
async fn take_parked(channel: &Channel, queue: &str, taken: &mut Vec<Delivery>) -> Result<()> {
    while taken.len() < RESUME_SCAN_LIMIT {
        match channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            Some(message) => taken.push(message.delivery),
            None => break,
        }
    }
    Ok(())
}
