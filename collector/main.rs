//! bannin-collector: enrolls agents, verifies and stores their events, detects and alerts.
#![forbid(unsafe_code)]

mod alert;
mod detect;

fn main() {}
