//! Attacks on bannin's promises, each reproduced through the real agent and collector: an insider
//! with an ordinary account on a watched host, a compromised enrolled agent, a hostile network or
//! webhook receiver, and someone who can write to the collector's store. One file per front.

mod database;
mod detection;
mod display;
mod endpoint;
mod host;
mod ingest;
mod tamper;
