//! A runner of the orders workflow: `AMQP_URL` and `INQUBO_PREFIX` say where (see
//! `RunnerBuilder::from_env`); Ctrl-C or SIGTERM stops it gracefully.
//!
//! Trigger a run with the `inqubo` command line:
//! `inqubo trigger orders --input '{"item": "tea", "quantity": 2, "unit_cents": 450}' --wait`

use inqubo::{RunnerBuilder, shutdown_signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runner = RunnerBuilder::from_env(orders::workflow()?)?
        .connect()
        .await?;
    eprintln!("running workflow orders (Ctrl-C stops)");
    runner.run(shutdown_signal()).await?;
    Ok(())
}
