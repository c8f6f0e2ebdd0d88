//! Fuzz targets for the code that reads input an attacker or a careless
//! operator controls. They run on stable Rust inside `cargo test`:
//!
//! | target | what it feeds | what must hold |
//! |---|---|---|
//! | [`template`] | request templates (`RequestTemplate::compile`) and argument objects (`render`) | Ok or a config error; a rendered URL keeps its origin, its path shape and its query keys; no panic |
//! | [`input`] | argument/response bytes, JSON Schemas, `select` pointers (bounds → parse → validate → select) | the depth scan agrees with the parser; violations are capped and point into the document; no panic |
//! | [`quota`] | upstream response headers (`quota::exhausted_for`, `retry::upstream_wait`) | any header value gives a wait or none; no panic |
//! | [`config`] | `tools.yaml` text (`spec::parse` + `Registry::build`) | Ok or a `ConfigError`; no panic, no hang |
//!
//! The generators are structure-aware (proptest strategies for JSON values,
//! JSON Schemas, templates, YAML documents) and mix in the seed corpus under
//! `tests/fuzz/corpus/<target>/`, mutated; every seed is also replayed as is.
//! A failure is shrunk to a minimal input and printed with the seed that
//! reproduces it.
//!
//! Two modes, chosen by environment variables:
//! - `cargo test` (and `make test`): a fixed seed and `FUZZ_CASES` cases per
//!   target (a few seconds each), so the run is deterministic.
//! - `FUZZ_SECONDS=600 cargo test --test fuzz <target> -- --nocapture` (what
//!   `make fuzz` runs): a fresh seed (or `FUZZ_SEED`) and batches of cases
//!   until the time is up; it prints the executions.
//!
//! proptest rather than libFuzzer: cargo-fuzz needs a nightly toolchain, and
//! these inputs are structured (templates, schemas, YAML), which generators
//! reach far better than byte mutation.

mod config;
mod corpus;
mod input;
mod quota;
mod strategies;
mod template;

use std::cell::Cell;
use std::fmt::Debug;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

/// A long run stops after this many different failure messages.
const MAX_DISTINCT_FAILURES: usize = 20;

/// The seed of the deterministic short run.
const FIXED_SEED: u64 = 0x7a4d_e416;

/// One input running longer than this is reported as a hang. Generous: the
/// tests run unoptimised, on a shared machine.
const SLOW_INPUT: Duration = Duration::from_secs(10);

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
    )
}

/// Runs `check` on every seed, then on generated inputs: `short_cases` of
/// them with a fixed seed, or batches until `FUZZ_SECONDS` have passed.
pub fn fuzz<S>(
    target: &str,
    short_cases: u32,
    seeds: &[(String, S::Value)],
    strategy: S,
    check: impl Fn(&S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let started = Instant::now();
    quiet_panics();
    // Every failing seed is reported, then generation runs anyway: one run
    // lists all that is known to fail.
    let mut failures = Vec::new();
    for (name, seed) in seeds {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| timed(&check, seed)));
        let reason = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(payload) => format!("panicked: {}", panic_message(&*payload)),
        };
        failures.push(format!("seed {name}: {reason}\ninput: {seed:#?}"));
    }
    let long = env_u64("FUZZ_SECONDS").map(Duration::from_secs);
    let seed = env_u64("FUZZ_SEED").unwrap_or(match long {
        None => FIXED_SEED,
        Some(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(FIXED_SEED, |d| d.as_nanos() as u64),
    });
    let cases = match long {
        None => env_u64("FUZZ_CASES").map_or(short_cases, |n| n as u32),
        Some(_) => 256,
    };
    let executions = Cell::new(seeds.len() as u64);
    let mut known = std::collections::HashSet::new();
    // A runner stops after `cases` successes, so a long run is a sequence of
    // runners, each with its own seed: a failure's message names the seed
    // that replays its batch alone.
    for batch in 0u64.. {
        let batch_seed = seed.wrapping_add(batch);
        let mut runner = TestRunner::new(Config {
            cases,
            rng_seed: RngSeed::Fixed(batch_seed),
            // The corpus is the memory of past findings, not proptest's files.
            failure_persistence: None,
            max_shrink_iters: 2048,
            ..Config::default()
        });
        let result = runner.run(&strategy, |value| {
            executions.set(executions.get() + 1);
            timed(&check, &value)
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, input)) => {
                let reason = reason.to_string();
                if !known.contains(&reason) {
                    failures.push(format!(
                        "generated input: {reason}\nminimal input: {input:#?}\n\
                         reproduce: FUZZ_SEED={batch_seed} FUZZ_CASES={cases} \
                         cargo test --test fuzz {target}"
                    ));
                    known.insert(reason);
                }
                // A long run goes on looking for other failures.
                if long.is_none() || known.len() >= MAX_DISTINCT_FAILURES {
                    break;
                }
            }
            Err(TestError::Abort(reason)) => {
                failures.push(format!("aborted: {reason}"));
                break;
            }
        }
        if long.is_none_or(|d| started.elapsed() >= d) {
            break;
        }
    }
    eprintln!(
        "fuzz target {target}: {} executions in {:.1?} (seed {seed}), {} failure(s)",
        executions.get(),
        started.elapsed(),
        failures.len()
    );
    if !failures.is_empty() {
        panic!(
            "fuzz target {target} found {} failure(s):\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}

/// Panics are caught and reported with their input, so the default hook's
/// line per panic (thousands in a long run) is noise: print where it
/// happened, once per place.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let seen = std::sync::Mutex::new(std::collections::HashSet::new());
        std::panic::set_hook(Box::new(move |info| {
            let place = info
                .location()
                .map_or_else(|| "unknown".to_owned(), ToString::to_string);
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.insert(place.clone()) {
                eprintln!("panic at {place}: {}", panic_message(info.payload()));
            }
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// `check(value)`, failing when it takes longer than [`SLOW_INPUT`].
fn timed<T>(
    check: impl Fn(&T) -> Result<(), TestCaseError>,
    value: &T,
) -> Result<(), TestCaseError> {
    let started = Instant::now();
    check(value)?;
    let took = started.elapsed();
    if took > SLOW_INPUT {
        return Err(TestCaseError::fail(format!(
            "one input took {took:?} (limit {SLOW_INPUT:?})"
        )));
    }
    Ok(())
}
