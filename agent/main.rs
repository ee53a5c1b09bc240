//! bannin-agent: watches a host and streams signed, hash-chained events to the collector.
// deny rather than forbid: the fanotify module must call the kernel and opts in with allow(unsafe_code).
#![deny(unsafe_code)]

mod pipeline;
mod sensors;

fn main() {}
