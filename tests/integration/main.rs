//! One integration test binary: each module exercises one capability through the real binaries.

// Test helpers, like tests, stop at the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod adversary;
mod console;
mod db;
// The private database servers the agent's own tests use, shared rather than copied.
#[path = "../../agent/sensors/db/testsupport.rs"]
mod db_servers;
mod detection;
mod ebpf;
mod examples;
mod files;
mod foundation;
mod harness;
mod investigate;
mod netclose;
// A private database on the machine's PostgreSQL, shared with the benchmarks.
#[allow(dead_code)] // The benchmarks use the rest of it.
#[path = "../support/pg_db.rs"]
mod pg_db;
mod pgmetrics;
mod pgretention;
mod pgstore;
mod procnet;
mod readbytes;
mod reads;
mod refusals;
mod scenarios;
mod sigma;
mod sim;
