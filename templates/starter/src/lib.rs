//! An orders workflow: check the order, then reserve the stock and charge the card at the same
//! time, then confirm once both are done.
//!
//! ```text
//! check ──┬── reserve ──┬── confirm
//!         └── charge  ──┘
//! ```

use serde::{Deserialize, Serialize};

use inqubo::{RetryPolicy, Step, StepContext, StepError, Workflow, WorkflowError};

/// What a client sends to start a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    /// The item ordered.
    pub item: String,
    /// How many.
    pub quantity: u32,
    /// The price of one, in cents.
    pub unit_cents: u64,
}

/// An order that passed the checks, with its total.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checked {
    /// The order.
    pub order: Order,
    /// What it costs, in cents.
    pub total_cents: u64,
}

async fn check(order: Order, _ctx: StepContext) -> Result<Checked, StepError> {
    if order.quantity == 0 {
        // Retrying will not make it valid: fail the run at once.
        return Err(StepError::fatal("an order needs at least one item"));
    }
    let total_cents = order.unit_cents * u64::from(order.quantity);
    Ok(Checked { order, total_cents })
}

async fn reserve(checked: Checked, ctx: StepContext) -> Result<String, StepError> {
    // The idempotency key is the same on every attempt of this step in this run: hand it to
    // the stock service so that a retried reservation is not made twice.
    Ok(format!("reservation {} for {} × {}", ctx.idempotency_key(), checked.order.quantity, checked.order.item))
}

async fn charge(checked: Checked, ctx: StepContext) -> Result<u64, StepError> {
    let _ = ctx.idempotency_key();
    Ok(checked.total_cents)
}

async fn confirm((reservation, charged): (String, u64), _ctx: StepContext) -> Result<String, StepError> {
    Ok(format!("{reservation}; charged {charged} cents"))
}

/// The workflow, as every runner of it and every test builds it.
pub fn workflow() -> Result<Workflow, WorkflowError> {
    Workflow::builder("orders")
        .start(Step::new("check", check))
        .then((
            Step::new("reserve", reserve),
            Step::new("charge", charge).retry(RetryPolicy::limited(3, std::time::Duration::from_secs(1))),
        ))
        .then(Step::new("confirm", confirm))
        .build()
}
