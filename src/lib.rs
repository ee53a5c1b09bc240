//! What both bannin binaries share: the event model, its wire form, the hash chain and signatures,
//! TLS material, configuration helpers and retry backoff.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod chain;
pub mod config;
pub mod event;
pub mod pki;
pub mod proto;
pub mod runs;
pub mod securefs;
pub mod signals;
pub mod time;

/// Generated protobuf and gRPC types. Only `proto` (conversions) and the services touch them.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("bannin.v1");
}

/// An error and its causes as one line, for `main`: each cause once, even when a message already
/// quotes its source.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_line_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(io).context("cannot read x.toml: no such file");
        assert_eq!(
            super::error_line(&error),
            "cannot read x.toml: no such file"
        );
        let error = anyhow::anyhow!("disk full").context("cannot write the spool");
        assert_eq!(
            super::error_line(&error),
            "cannot write the spool: disk full"
        );
    }
}
