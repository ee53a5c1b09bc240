//! One integration test binary: each module exercises one capability through the real binaries.

mod detection;
mod examples;
mod foundation;
mod harness;
mod refusals;
