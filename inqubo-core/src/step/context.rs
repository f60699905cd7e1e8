//! What a step knows about the attempt it is running.

use tokio_util::sync::CancellationToken;

use crate::name::{RunId, StepName, WorkflowName};

/// What a step knows about the attempt it is running.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The run this attempt belongs to.
    pub run_id: RunId,
    /// The workflow being run.
    pub workflow: WorkflowName,
    /// The step being run.
    pub step: StepName,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// For a map step: the element's place in its list, from 0.
    element: Option<u32>,
    /// Fires when the run is cancelled, or fails elsewhere in a workflow that fails fast.
    cancel: CancellationToken,
}

impl PartialEq for StepContext {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.run_id,
            &self.workflow,
            &self.step,
            self.attempt,
            self.element,
        ) == (
            &other.run_id,
            &other.workflow,
            &other.step,
            other.attempt,
            other.element,
        )
    }
}

impl StepContext {
    /// The context of `attempt` of `step` in run `run_id`, never cancelled.
    pub fn new(run_id: RunId, workflow: WorkflowName, step: StepName, attempt: u32) -> Self {
        Self {
            run_id,
            workflow,
            step,
            attempt,
            element: None,
            cancel: CancellationToken::new(),
        }
    }

    /// The same context, for the map element at `index` (the runtime sets it).
    #[must_use]
    pub fn with_element(mut self, index: Option<u32>) -> Self {
        self.element = index;
        self
    }

    /// For an attempt of a map step: the element's place in the list the map's parent
    /// returned, from 0. `None` for any other step.
    pub fn element(&self) -> Option<u32> {
        self.element
    }

    /// The same context, cancelled when `cancel` is (the runtime passes the run's token).
    #[must_use]
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Whether the run has ended elsewhere: cancelled, or failed in a workflow that fails
    /// fast. A long step may stop early; whatever it returns is still recorded.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the run ends elsewhere (see [`StepContext::is_cancelled`]):
    /// `tokio::select!` on it to stop a long step.
    ///
    /// ```
    /// # use inqubo_core::{StepContext, StepError};
    /// async fn crunch(n: u64, ctx: StepContext) -> Result<u64, StepError> {
    ///     tokio::select! {
    ///         () = ctx.cancelled() => Err(StepError::fatal("run cancelled")),
    ///         sum = async { (0..n).sum::<u64>() } => Ok(sum),
    ///     }
    /// }
    /// ```
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// A key that is the same for every attempt and redelivery of this step in this run (of
    /// this element, for a map step: `<workflow>:<step>[<index>]:<run>`).
    ///
    /// Pass it to external systems that deduplicate requests, so that an at-least-once
    /// redelivery does not do the work twice.
    pub fn idempotency_key(&self) -> String {
        match self.element {
            Some(index) => format!("{}:{}[{index}]:{}", self.workflow, self.step, self.run_id),
            None => format!("{}:{}:{}", self.workflow, self.step, self.run_id),
        }
    }
}
