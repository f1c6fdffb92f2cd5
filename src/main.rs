//! The `kirt` binary: parse arguments, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use kirt::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.global);
    // kube's and the AWS SDK's rustls would both register a crypto provider; pick one, once.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(kirt::Exit::Failure as u8);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = kirt::signal::Shutdown::install()
            .map_err(|e| kirt::Error::io("installing the SIGINT/SIGTERM handlers", e))?;
        // Long commands watch `shutdown` and undo what is in progress; any other command is cut
        // short once the grace period after the signal has passed.
        tokio::select! {
            r = kirt::cli::run(cli, shutdown.clone()) => r,
            e = shutdown.grace_expired() => Err(e),
        }
    });
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            tracing::debug!(error = ?e, "command failed");
            eprintln!("error: {e}");
            e.exit().into()
        }
    }
}

fn init_logging(g: &kirt::cli::GlobalArgs) {
    let default = match (g.quiet, g.verbose) {
        // kube-client logs every failed request at ERROR, including expected ones (readiness polls)
        (true, _) => "error,kube_client=off",
        (false, 0) => "kirt=info,warn,kube_client=off",
        (false, 1) => "kirt=debug,info",
        (false, _) => "kirt=trace,info",
    };
    let filter = EnvFilter::try_from_env("KIRT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match g.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}
