//! The workflow's logic, in milliseconds and without RabbitMQ: `inqubo::testing` drives the
//! same engine the runners use.

use inqubo::{FailureReason, RunOutcome, testing::TestRunner};
use orders::{Order, workflow};

fn order(quantity: u32) -> Order {
    Order {
        item: "tea".into(),
        quantity,
        unit_cents: 450,
    }
}

#[tokio::test(start_paused = true)]
async fn an_order_is_reserved_charged_and_confirmed() {
    let report = TestRunner::new(workflow().unwrap()).run("o-1", &order(2)).await;
    let Some(RunOutcome::Succeeded(outputs)) = report.outcome else {
        panic!("{:?}", report.outcome);
    };
    let confirmed = outputs["confirm"].as_str().unwrap();
    assert!(confirmed.ends_with("charged 900 cents"), "{confirmed}");
    assert!(confirmed.contains("2 × tea"), "{confirmed}");
}

#[tokio::test(start_paused = true)]
async fn an_empty_order_fails_at_its_check() {
    let report = TestRunner::new(workflow().unwrap()).run("o-2", &order(0)).await;
    let Some(RunOutcome::Failed(failure)) = report.outcome else {
        panic!("{:?}", report.outcome);
    };
    assert_eq!(failure.step.as_str(), "check");
    assert_eq!(failure.reason, FailureReason::Fatal);
    assert_eq!(failure.error, "an order needs at least one item");
}
