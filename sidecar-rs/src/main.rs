//! `sidecar`: parse flags, set up logging and tracing, and hand over to
//! [`sidecar::run`].

use std::process::ExitCode;

use clap::Parser;
use sidecar::cli::Cli;
use sidecar::config::registry::Registry;
use sidecar::metrics::Metrics;
use sidecar::policy::fleet::Fleet;
use sidecar::telemetry::Telemetry;
use sidecar::upstream::origins::Upstreams;

/// mimalloc rather than the system allocator: building each response's JSON tree is
/// allocation-heavy, and `make bench` measured about 29% less sidecar CPU per 100 KB
/// call with it (glibc malloc and free were about 30% of a call's profile). Built
/// without its transparent-huge-page advice (Cargo.toml says why).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stack of each runtime thread. Parsing and validating recurse once per
/// nesting level (up to `max_json_depth`, at most 127 on the sonic-rs road);
/// a release build needs well under 256 KiB for that, an unoptimised one
/// (what the tests run) about 4 MiB. Only the pages touched become resident.
const WORKER_STACK: usize = 8 << 20;

/// How long the spans not yet exported may take to flush at exit. The SDK's
/// batch processor (the async-runtime one) ignores its own shutdown timeout:
/// it exports what it holds batch by batch, each with the exporter's 10 s, so
/// a collector that accepts connections and never answers held the exit for
/// a minute, past the drain and into the pod's grace period.
const TRACE_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let otlp = if cli.check_config {
        None
    } else {
        cli.otlp_endpoint.as_deref()
    };
    let telemetry = {
        let _inside = runtime.enter();
        match Telemetry::init(cli.log_format, otlp) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("sidecar: {e}");
                return ExitCode::FAILURE;
            }
        }
    };

    if cli.check_config {
        return runtime.block_on(async { check_config(&cli) });
    }
    let config = match cli.server_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sidecar: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(sidecar::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "sidecar failed");
            eprintln!("sidecar: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Flushing blocks on the exporter's task; do it off the runtime's
    // workers, and for TRACE_FLUSH_TIMEOUT at most.
    let flush = runtime.spawn_blocking(move || telemetry.shutdown());
    if runtime
        .block_on(async { tokio::time::timeout(TRACE_FLUSH_TIMEOUT, flush).await })
        .is_err()
    {
        tracing::warn!(
            timeout = ?TRACE_FLUSH_TIMEOUT,
            "the trace collector took the spans not yet exported too long; exiting without them"
        );
    }
    // A flush past its deadline is still blocked on the exporter: leave it.
    runtime.shutdown_background();
    code
}

fn check_config(cli: &Cli) -> ExitCode {
    let path = cli.config.display();
    let metrics = Metrics::new();
    let mut upstreams = Upstreams::new(Default::default(), metrics.clone());
    if let Some(url) = &cli.redis_url {
        // Only to compile fleet limits: it never connects, so nothing is
        // sent and this process never counts as a live sidecar.
        match Fleet::offline(url.as_str(), metrics.fleet.clone()) {
            Ok(fleet) => upstreams = upstreams.with_fleet(fleet),
            Err(e) => {
                eprintln!("sidecar: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
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
