//! bannin-agent: watches a host and streams signed, hash-chained events to the collector.
#![forbid(unsafe_code)]

mod pipeline;
mod sensors;

fn main() {}
