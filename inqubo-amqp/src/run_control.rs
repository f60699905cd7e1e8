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
    protocol::{self, CancelReply, Incoming, header},
};
use lapin::{
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
    /// Each input is taken out of the parked queue only after the broker confirmed it back
    /// in its step's queue. Fails with [`Error::NothingToResume`] if the run has no parked
    /// input that can go back.
    #[instrument(skip_all, fields(%workflow, %run_id))]
    pub async fn resume(&self, workflow: &WorkflowName, run_id: &RunId) -> Result<Resumed> {
        let session = self.session().await?;
        let channel = session.channel().await?;
        let queue = self.topology().parked_queue(workflow);
        let mut taken: Vec<Delivery> = Vec::new();
        while taken.len() < RESUME_SCAN_LIMIT {
            match channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await?
            {
                Some(message) => taken.push(message.delivery),
                None => break,
            }
        }
        let (mine, others): (Vec<&Delivery>, Vec<&Delivery>) = taken
            .iter()
            .partition(|d| wire::incoming(d).run_id().ok().as_ref() == Some(run_id));
        let parked: Vec<Incoming<'_>> = mine.iter().map(|d| wire::incoming(d)).collect();
        let messages = protocol::resume_run(workflow, &parked);
        let generation = messages
            .iter()
            .flatten()
            .find_map(|m| m.headers.int(header::RUN_GENERATION))
            .and_then(|g| u32::try_from(g).ok());
        let mut sent = Vec::new();
        let mut kept: Vec<&Delivery> = others;
        for (delivery, message) in mine.iter().zip(messages) {
            match message {
                Some(message) => {
                    let received = delivery.properties.headers().as_ref();
                    sent.push((
                        delivery,
                        Wire::new(self.topology().names(), message, received),
                    ));
                }
                None => kept.push(delivery),
            }
        }
        let result = match generation {
            Some(generation) if !sent.is_empty() => {
                let wires = sent.iter().map(|(_, wire)| wire.clone()).collect();
                // Bounded: the parked queue's messages are held until this returns, so a
                // broker that blocks publishers (a disk or memory alarm) must not hold them
                // for ever, hiding them from every other resume.
                match tokio::time::timeout(
                    RESUME_CONFIRM_TIMEOUT,
                    session.publisher.send_all(wires),
                )
                .await
                {
                    Ok(sent_back) => sent_back.map(|()| Resumed {
                        generation,
                        inputs: sent.len(),
                    }),
                    Err(_) => Err(Error::ResumeTimeout {
                        run_id: run_id.to_string(),
                        timeout: RESUME_CONFIRM_TIMEOUT,
                    }),
                }
            }
            _ => Err(Error::NothingToResume {
                run_id: run_id.to_string(),
            }),
        };
        // Confirmed back in their steps' queues: the parked copies go. Otherwise they stay.
        let resumed = result.is_ok();
        for (delivery, _) in &sent {
            if resumed {
                delivery.ack(BasicAckOptions::default()).await?;
            } else {
                kept.push(delivery);
            }
        }
        for delivery in kept {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
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
