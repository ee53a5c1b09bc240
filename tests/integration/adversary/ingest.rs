//! A compromised agent or a hostile network tries to crash, starve or mislead the collector.
