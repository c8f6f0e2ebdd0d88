//! `sidecar`: parse flags, set up logging, and hand over to [`sidecar::run`].

use std::process::ExitCode;

use clap::Parser;
use sidecar::cli::{Cli, LogFormat};
use sidecar::metrics::Metrics;
use sidecar::registry::Registry;
use sidecar::upstreams::Upstreams;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if cli.check_config {
        return check_config(&cli);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match cli.server_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sidecar: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sidecar::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "sidecar failed");
            eprintln!("sidecar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(cli: &Cli) -> ExitCode {
    let path = cli.config.display();
    let upstreams = Upstreams::new(Default::default(), Metrics::new());
    match Registry::load(&cli.config, &upstreams, None) {
        Ok(registry) => {
            let names: Vec<String> = registry.describe().into_iter().map(|t| t.name).collect();
            println!("{path}: OK, {} tools: {}", names.len(), names.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sidecar: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the sidecar");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
