//! One integration test binary: each module exercises one capability through the real binaries.

mod files;
mod foundation;
mod harness;
mod refusals;
