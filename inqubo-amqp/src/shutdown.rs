//! The signal a runner process stops on.

use tracing::warn;

/// Completes when the process is asked to stop: Ctrl-C (SIGINT) or, on Unix, SIGTERM (what
/// `docker stop`, systemd and Kubernetes send). Give it to [`Runner::run`](crate::Runner::run)
/// for a graceful shutdown: attempts in flight finish and publish, fetched inputs go back.
///
/// If a signal cannot be listened for, that signal is ignored (with a warning) rather than
/// taken as a request to stop.
///
/// ```no_run
/// # async fn demo(flow: inqubo_core::Workflow) -> Result<(), inqubo_amqp::Error> {
/// use inqubo_amqp::{RunnerBuilder, shutdown_signal};
///
/// RunnerBuilder::from_env(flow)?.connect().await?.run(shutdown_signal()).await
/// # }
/// ```
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
