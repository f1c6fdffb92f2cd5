//! SIGINT/SIGTERM (cron and Kubernetes stop jobs with SIGTERM): the future that resolves when one
//! arrives, for the phases of a command that can stop cleanly.

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
