//! `sensor.*` events: what a sensor says about itself (which backend it runs, a log it cannot
//! read, events it lost, a rescan done). Every one is built here and logged as it is built, so
//! the agent's own log and the audit trail always say the same thing.

use bannin::event::{SensorEvent, SensorStatus};

/// A `sensor.*` event being built; [`Notice::logged`] logs it and hands it over to be emitted.
#[must_use = "a notice is only logged and emitted by `logged`"]
pub struct Notice(SensorEvent);

impl Notice {
    /// `sensor.status`: what the sensor runs and watches.
    pub fn status(sensor: &str, message: impl Into<String>) -> Notice {
        Notice(SensorEvent::new(SensorStatus::Status, sensor, message))
    }

    /// `sensor.error`: something the sensor cannot do; it goes on with the rest.
    pub fn error(sensor: &str, message: impl Into<String>) -> Notice {
        Notice(SensorEvent::new(SensorStatus::Error, sensor, message))
    }

    /// `sensor.recovered`: what an earlier error or overflow stopped works again.
    pub fn recovered(sensor: &str, message: impl Into<String>) -> Notice {
        Notice(SensorEvent::new(SensorStatus::Recovered, sensor, message))
    }

    /// `sensor.overflow`: events lost before they reached the spool.
    pub fn overflow(sensor: &str, message: impl Into<String>) -> Notice {
        Notice(SensorEvent::new(SensorStatus::Overflow, sensor, message))
    }

    /// The file or log the notice is about.
    pub fn path(mut self, path: impl std::fmt::Display) -> Notice {
        self.0.path = path.to_string();
        self
    }

    /// How many events or records the notice counts.
    pub fn count(mut self, count: u64) -> Notice {
        self.0.count = count;
        self
    }

    /// The count is not known (the kernel said it lost events, not how many).
    pub fn count_unknown(mut self) -> Notice {
        self.0.count_unknown = true;
        self
    }

    /// Logs the notice (status and recovered at info, error and overflow at warn) and returns the
    /// event to emit.
    pub fn logged(self) -> SensorEvent {
        let event = self.0;
        let (sensor, message) = (event.sensor.as_str(), event.message.as_str());
        let path = (!event.path.is_empty()).then_some(event.path.as_str());
        match event.status {
            SensorStatus::Status => tracing::info!(sensor, path, "{message}"),
            SensorStatus::Recovered => tracing::info!(sensor, path, "recovered: {message}"),
            SensorStatus::Error => tracing::warn!(sensor, path, "{message}"),
            SensorStatus::Overflow => {
                tracing::warn!(sensor, count = event.count, "overflow: {message}")
            }
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_carries_what_it_was_built_with() {
        let event = Notice::error("db", "database x: cannot read; retrying")
            .path("/var/log/x")
            .count(1)
            .logged();
        assert_eq!(event.status, SensorStatus::Error);
        assert_eq!(event.sensor, "db");
        assert_eq!(event.path, "/var/log/x");
        assert_eq!(event.count, 1);
        let overflow = Notice::overflow("files", "lost").count_unknown().logged();
        assert!(overflow.count_unknown);
        assert_eq!(overflow.status, SensorStatus::Overflow);
    }
}
