//! What both bannin binaries share: the event model, its wire form, the hash chain and signatures,
//! TLS material, and configuration helpers.
#![forbid(unsafe_code)]

pub mod chain;
pub mod config;
pub mod event;
pub mod pki;
pub mod proto;
pub mod signals;
pub mod time;

/// Generated protobuf and gRPC types. Only `proto` (conversions) and the services touch them.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("bannin.v1");
}
