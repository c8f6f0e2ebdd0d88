//! Configuration: what an operator writes and what it compiles into.
//!
//! | module | responsibility |
//! |---|---|
//! | [`spec`] | `tools.yaml` as serde data, one documented field at a time |
//! | [`registry`] | every tool compiled into what a call needs; built once per load |
//! | [`schema`] | JSON Schema compile (once: the draft by `$schema`, `schemas:` documents for `$ref`, formats asserted or annotated) and validation with JSON Pointer violations |
//! | [`template`] | request templates: arguments fill path segments, query, headers and body, never the host |
//! | [`secrets`] | `${env:..}` / `${file:..}` references and their resolution |
//! | [`redact`] | scrubbing secret values (and their encodings) from everything that leaves |
//! | [`reload`] | hot reload on SIGHUP and on file changes (the tools file, secret files, schema files) |
//! | [`yaml`] | YAML text to JSON values, numbers exactly as written (no serde YAML library keeps their digits) |

pub mod files;
pub mod redact;
pub mod registry;
pub mod reload;
pub mod schema;
pub mod secrets;
pub mod spec;
pub mod template;
pub mod yaml;
