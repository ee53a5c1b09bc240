//! The agent's own host is hostile or full: its state directory, keys and disk.
