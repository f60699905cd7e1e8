//! Telling, of each confirmed publish, whether the broker returned it as unroutable.
//!
//! A `basic.return` does not say which publish it answers: AMQP only promises that it comes
//! before that publish's confirm. lapin hands each return to whichever confirm of the channel
//! it completes next, which, with several publishes in flight on one channel (an attempt's
//! `started` event and its outcome, attempts of other runs), may be another publish's confirm.
//! Taken at its word, that would call a routed message unroutable and, worse, a returned
//! message delivered: its run would wait forever for a message nobody holds.
//!
//! So every confirm of a channel goes through one [`Ledger`]. Its task collects the confirms as
//! they complete, files each returned message under its identity (exchange, routing key and
//! `message_id`), and only then tells each publish its verdict: returned if a return with its
//! identity was filed, confirmed otherwise. A return is always taken by a confirm that
//! completes no later than its own publish's, so before giving a verdict the task takes in
//! every confirm that has completed, and waits for publishes that were being sent and whose
//! confirm it does not hold yet.

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use lapin::{Confirmation, message::BasicReturnMessage};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// What the broker said of one publish.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// The broker took responsibility for the message.
    Confirmed,
    /// The broker confirmed the message but returned it: no queue was bound to its route.
    Returned,
    /// The broker refused the message (negative confirm).
    Refused,
    /// The channel failed before the confirm came.
    Failed(lapin::Error),
}

/// Which message a return is of: a publish and its return carry the same three.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    exchange: String,
    routing_key: String,
    message_id: Option<String>,
}

impl Identity {
    /// The identity of a message published to `exchange` with `routing_key`.
    pub(crate) fn new(exchange: &str, routing_key: &str, message_id: Option<&str>) -> Self {
        Self {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            message_id: message_id.map(str::to_owned),
        }
    }

    fn of_return(message: &BasicReturnMessage) -> Self {
        let delivery = &message.delivery;
        Self::new(
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str()),
        )
    }
}

/// The confirms of one channel; cheap to clone. Its task ends once every clone is gone and
/// every confirm it holds has its verdict.
#[derive(Debug)]
pub(crate) struct Ledger<C = lapin::PublisherConfirm> {
    registrations: mpsc::UnboundedSender<Registration<C>>,
    sending: Arc<Mutex<Sending>>,
}

impl<C> Clone for Ledger<C> {
    fn clone(&self) -> Self {
        Self {
            registrations: self.registrations.clone(),
            sending: Arc::clone(&self.sending),
        }
    }
}

/// The publishes being sent: numbered before they go out, so that the ledger knows which
/// confirms it may still be handed.
#[derive(Debug, Default)]
struct Sending {
    next: u64,
    unregistered: BTreeSet<u64>,
}

#[derive(Debug)]
enum Registration<C> {
    Confirm {
        number: u64,
        identity: Identity,
        confirm: C,
        verdict: oneshot::Sender<Verdict>,
    },
    /// The publish failed: nothing comes for its number (sent only to wake the task).
    Abandoned,
}

/// A publish about to be sent. Dropping it unregistered (the publish failed) tells the ledger
/// not to wait for it.
#[derive(Debug)]
pub(crate) struct Reservation<C = lapin::PublisherConfirm> {
    number: u64,
    ledger: Ledger<C>,
    registered: bool,
}

impl<C> Ledger<C>
where
    C: Future<Output = lapin::Result<Confirmation>> + Send + Unpin + 'static,
{
    /// A ledger and its task (on the current tokio runtime).
    pub(crate) fn new() -> Self {
        let (registrations, receiver) = mpsc::unbounded_channel();
        let sending = Arc::new(Mutex::new(Sending::default()));
        let book = Book {
            registrations: receiver,
            sending: Arc::clone(&sending),
            confirms: FuturesUnordered::new(),
            waiting: HashMap::new(),
            settled: Vec::new(),
            returned: HashMap::new(),
        };
        tokio::spawn(book.keep());
        Self {
            registrations,
            sending,
        }
    }

    /// Numbers a publish before it is sent.
    pub(crate) fn reserve(&self) -> Reservation<C> {
        let mut sending = lock(&self.sending);
        let number = sending.next;
        sending.next += 1;
        sending.unregistered.insert(number);
        Reservation {
            number,
            ledger: self.clone(),
            registered: false,
        }
    }
}

impl<C> Reservation<C> {
    /// Hands the sent publish's confirm to the ledger; the receiver gets its verdict.
    pub(crate) fn register(mut self, identity: Identity, confirm: C) -> oneshot::Receiver<Verdict> {
        let (verdict, receiver) = oneshot::channel();
        self.registered = true;
        self.hand_over(Registration::Confirm {
            number: self.number,
            identity,
            confirm,
            verdict,
        });
        receiver
    }

    /// Sends `registration` and marks the publish registered in one step, so that the ledger,
    /// which looks at both under the same lock, never misses a confirm.
    fn hand_over(&self, registration: Registration<C>) {
        let mut sending = lock(&self.ledger.sending);
        // A closed ledger means its task ended with the runtime: nobody waits for a verdict.
        let _ = self.ledger.registrations.send(registration);
        sending.unregistered.remove(&self.number);
    }
}

impl<C> Drop for Reservation<C> {
    fn drop(&mut self) {
        if !self.registered {
            self.hand_over(Registration::Abandoned);
        }
    }
}

fn lock(sending: &Mutex<Sending>) -> MutexGuard<'_, Sending> {
    sending.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A confirm with the number of its publish.
struct Numbered<C> {
    number: u64,
    confirm: C,
}

impl<C> Future for Numbered<C>
where
    C: Future<Output = lapin::Result<Confirmation>> + Unpin,
{
    type Output = (u64, lapin::Result<Confirmation>);

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let number = self.number;
        Pin::new(&mut self.confirm)
            .poll(cx)
            .map(|confirmation| (number, confirmation))
    }
}

/// The ledger's task: the confirms it holds, the returns filed, the verdicts not yet told.
struct Book<C> {
    registrations: mpsc::UnboundedReceiver<Registration<C>>,
    sending: Arc<Mutex<Sending>>,
    confirms: FuturesUnordered<Numbered<C>>,
    waiting: HashMap<u64, (Identity, oneshot::Sender<Verdict>)>,
    /// Completed confirms, each with the first publish number not yet reserved when it was
    /// taken in: every publish before that one must be held before its verdict is told.
    settled: Vec<(u64, u64, lapin::Result<Confirmation>)>,
    returned: HashMap<Identity, usize>,
}

impl<C> Book<C>
where
    C: Future<Output = lapin::Result<Confirmation>> + Send + Unpin + 'static,
{
    async fn keep(mut self) {
        let mut open = true;
        while open || !self.confirms.is_empty() || !self.settled.is_empty() {
            tokio::select! {
                registration = self.registrations.recv(), if open => match registration {
                    Some(registration) => self.take(registration),
                    None => open = false,
                },
                Some((number, confirmation)) = self.confirms.next(), if !self.confirms.is_empty() => {
                    self.complete(number, confirmation);
                }
                else => {}
            }
            self.tell();
        }
    }

    fn take(&mut self, registration: Registration<C>) {
        if let Registration::Confirm {
            number,
            identity,
            confirm,
            verdict,
        } = registration
        {
            self.waiting.insert(number, (identity, verdict));
            self.confirms.push(Numbered { number, confirm });
        }
    }

    fn complete(&mut self, number: u64, confirmation: lapin::Result<Confirmation>) {
        if let Ok(Confirmation::Ack(Some(message)) | Confirmation::Nack(Some(message))) =
            &confirmation
        {
            *self
                .returned
                .entry(Identity::of_return(message))
                .or_default() += 1;
        }
        let horizon = lock(&self.sending).next;
        self.settled.push((number, horizon, confirmation));
    }

    /// Takes in whatever is ready, then tells every verdict that no publish still being sent
    /// could change.
    fn tell(&mut self) {
        loop {
            while let Ok(registration) = self.registrations.try_recv() {
                self.take(registration);
            }
            while let Some(Some((number, confirmation))) = self.confirms.next().now_or_never() {
                self.complete(number, confirmation);
            }
            let sending = Arc::clone(&self.sending);
            let sending = lock(&sending);
            if !self.registrations.is_empty() {
                // Handed over since the drain above: take it in before judging.
                continue;
            }
            let oldest_unregistered = sending.unregistered.first().copied();
            let settled = std::mem::take(&mut self.settled);
            for (number, horizon, confirmation) in settled {
                if oldest_unregistered.is_some_and(|oldest| oldest < horizon) {
                    self.settled.push((number, horizon, confirmation));
                    continue;
                }
                self.judge(number, confirmation);
            }
            if self.waiting.is_empty()
                && sending.unregistered.is_empty()
                && !self.returned.is_empty()
            {
                warn!(returns = ?self.returned, "the broker returned messages no publish here claims");
                self.returned.clear();
            }
            return;
        }
    }

    fn judge(&mut self, number: u64, confirmation: lapin::Result<Confirmation>) {
        let Some((identity, verdict)) = self.waiting.remove(&number) else {
            return;
        };
        let told = match confirmation {
            Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => {
                match self.returned.get_mut(&identity) {
                    Some(count) if *count > 0 => {
                        *count -= 1;
                        if *count == 0 {
                            self.returned.remove(&identity);
                        }
                        Verdict::Returned
                    }
                    _ => Verdict::Confirmed,
                }
            }
            Ok(Confirmation::Nack(_)) => Verdict::Refused,
            Err(error) => Verdict::Failed(error),
        };
        // The publisher may have stopped waiting (a timeout): the verdict is then unheard.
        let _ = verdict.send(told);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::{BasicProperties, message::Delivery};

    type Fake = oneshot::Receiver<lapin::Result<Confirmation>>;

    /// A fake confirm: resolves with what is sent on the sender.
    #[derive(Debug)]
    struct Confirm(Fake);

    impl Future for Confirm {
        type Output = lapin::Result<Confirmation>;
        fn poll(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Self::Output> {
            Pin::new(&mut self.0)
                .poll(cx)
                .map(|sent| sent.expect("the test keeps every sender"))
        }
    }

    fn identity(routing_key: &str) -> Identity {
        Identity::new("events", routing_key, Some(routing_key))
    }

    fn returned(routing_key: &str) -> Confirmation {
        let mut delivery = Delivery::mock(0, "events".into(), routing_key.into(), false, vec![]);
        delivery.properties = BasicProperties::default().with_message_id(routing_key.into());
        Confirmation::Ack(Some(BasicReturnMessage {
            delivery,
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        }))
    }

    fn publish(
        ledger: &Ledger<Confirm>,
        routing_key: &str,
    ) -> (
        oneshot::Sender<lapin::Result<Confirmation>>,
        oneshot::Receiver<Verdict>,
    ) {
        let (resolve, confirm) = oneshot::channel();
        let verdict = ledger
            .reserve()
            .register(identity(routing_key), Confirm(confirm));
        (resolve, verdict)
    }

    #[tokio::test]
    async fn a_return_handed_to_another_confirm_reaches_its_own_publish() {
        let ledger = Ledger::<Confirm>::new();
        let (started, started_verdict) = publish(&ledger, "a.started");
        let (succeeded, succeeded_verdict) = publish(&ledger, "a.succeeded");
        // As lapin may do with one multiple ack: the return goes to the earlier confirm.
        started.send(Ok(returned("a.succeeded"))).unwrap();
        succeeded.send(Ok(Confirmation::Ack(None))).unwrap();
        assert!(matches!(started_verdict.await, Ok(Verdict::Confirmed)));
        assert!(matches!(succeeded_verdict.await, Ok(Verdict::Returned)));
    }

    #[tokio::test]
    async fn a_verdict_waits_for_a_publish_still_being_sent() {
        let ledger = Ledger::<Confirm>::new();
        let (first, mut first_verdict) = publish(&ledger, "first");
        let being_sent = ledger.reserve();
        first.send(Ok(Confirmation::Ack(None))).unwrap();
        // The publish being sent may hold first's return: no verdict until it is handed over.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(first_verdict.try_recv().is_err());
        let (second, second_confirm) = oneshot::channel();
        let second_verdict = being_sent.register(identity("second"), Confirm(second_confirm));
        second.send(Ok(returned("first"))).unwrap();
        assert!(matches!(first_verdict.await, Ok(Verdict::Returned)));
        assert!(matches!(second_verdict.await, Ok(Verdict::Confirmed)));
    }

    #[tokio::test]
    async fn an_abandoned_publish_holds_no_verdict_up() {
        let ledger = Ledger::<Confirm>::new();
        let (first, first_verdict) = publish(&ledger, "first");
        let failed_publish = ledger.reserve();
        first.send(Ok(Confirmation::Ack(None))).unwrap();
        drop(failed_publish);
        assert!(matches!(first_verdict.await, Ok(Verdict::Confirmed)));
    }

    #[tokio::test]
    async fn a_negative_confirm_is_a_refusal() {
        let ledger = Ledger::<Confirm>::new();
        let (only, verdict) = publish(&ledger, "only");
        only.send(Ok(Confirmation::Nack(None))).unwrap();
        assert!(matches!(verdict.await, Ok(Verdict::Refused)));
    }
}
