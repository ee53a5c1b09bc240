//! The path from sensors to the spool.
//!
//! Every sensor holds an [`EventTx`]: a bounded channel into the spool writer. `send` waits when the
//! spool is behind (back-pressure, nothing lost). A sensor that must not block (a kernel queue that
//! would overflow instead) keeps its own bounded queue and counts what it drops with `count_drop`.
//! The counts are reported as `sensor.overflow` events by [`spawn_drop_reporter`]: no loss is silent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bannin::event::{Body, Event, SensorEvent, SensorStatus};
use tokio::sync::mpsc;

/// Capacity of the channel between all sensors and the spool writer.
pub const CHANNEL_CAPACITY: usize = 8192;

#[derive(Debug, thiserror::Error)]
#[error("the spool writer has stopped")]
pub struct Closed;

#[derive(Default)]
struct Drops {
    by_sensor: Mutex<BTreeMap<&'static str, u64>>,
}

/// How many events were handed to the channel and how many the spool has committed, so a sensor
/// that keeps a read position (the database sensor) can move it only past committed events.
#[derive(Default)]
pub struct Watermark {
    sent: AtomicU64,
    committed: AtomicU64,
    /// Set when a spool writer reports commits; without one, "taken from the channel" stands in.
    tracked: AtomicBool,
}

impl Watermark {
    /// Called by the spool writer after a commit of `count` events.
    pub fn committed(&self, count: u64) {
        self.tracked.store(true, Ordering::Relaxed);
        self.committed.fetch_add(count, Ordering::AcqRel);
    }
}

/// A sensor's handle on the spool writer.
#[derive(Clone)]
pub struct EventTx {
    tx: mpsc::Sender<Event>,
    host: Arc<str>,
    sensor: &'static str,
    drops: Arc<Drops>,
    watermark: Arc<Watermark>,
}

impl EventTx {
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The same channel, with drops counted under another sensor's name.
    pub fn for_sensor(&self, sensor: &'static str) -> EventTx {
        EventTx {
            sensor,
            ..self.clone()
        }
    }

    /// Sends an event that happened now, waiting while the spool is behind.
    pub async fn send(&self, body: impl Into<Body>) -> Result<(), Closed> {
        self.send_event(Event::now(self.host.to_string(), body))
            .await
    }

    /// Sends a fully built event (its own timestamp), waiting while the spool is behind.
    pub async fn send_event(&self, event: Event) -> Result<(), Closed> {
        self.tx.send(event).await.map_err(|_| Closed)?;
        self.watermark.sent.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Sends from a thread outside the runtime, waiting while the spool is behind.
    pub fn blocking_send(&self, body: impl Into<Body>) -> Result<(), Closed> {
        self.tx
            .blocking_send(Event::now(self.host.to_string(), body))
            .map_err(|_| Closed)?;
        self.watermark.sent.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Whether the spool writer has taken every event sent so far.
    pub fn is_drained(&self) -> bool {
        self.tx.capacity() == self.tx.max_capacity()
    }

    /// Whether every event sent so far (by any sensor) is committed to the spool.
    pub fn is_committed(&self) -> bool {
        let w = &self.watermark;
        if !w.tracked.load(Ordering::Relaxed) {
            return self.is_drained();
        }
        w.committed.load(Ordering::Acquire) >= w.sent.load(Ordering::Acquire)
    }

    /// The counters the spool writer reports its commits to.
    pub fn watermark(&self) -> Arc<Watermark> {
        self.watermark.clone()
    }

    /// Counts events this sensor lost on its own side (a full internal queue).
    pub fn count_drop(&self, count: u64) {
        if let Ok(mut map) = self.drops.by_sensor.lock() {
            *map.entry(self.sensor).or_default() += count;
        }
    }
}

/// The channel every sensor sends into and the receiving end for the spool writer.
pub fn channel(host: &str) -> (EventTx, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let tx = EventTx {
        tx,
        host: Arc::from(host),
        sensor: "agent",
        drops: Arc::new(Drops::default()),
        watermark: Arc::new(Watermark::default()),
    };
    (tx, rx)
}

/// Every `interval`, turns the drop counts into `sensor.overflow` events, sent with back-pressure so
/// the report itself is never dropped.
pub fn spawn_drop_reporter(tx: EventTx, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let taken = match tx.drops.by_sensor.lock() {
                Ok(mut map) => std::mem::take(&mut *map),
                Err(_) => continue,
            };
            for (sensor, count) in taken {
                let mut event = SensorEvent::new(
                    SensorStatus::Overflow,
                    sensor,
                    format!("{count} events dropped because the spool could not keep up"),
                );
                event.count = count;
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bannin::event::{AgentAction, AgentEvent};

    #[tokio::test(start_paused = true)]
    async fn counted_drops_are_reported_as_sensor_overflow() {
        let (tx, mut rx) = mpsc::channel(1);
        let tx = EventTx {
            tx,
            host: Arc::from("h"),
            sensor: "files",
            drops: Arc::new(Drops::default()),
            watermark: Arc::new(Watermark::default()),
        };
        tx.send(AgentEvent::new(AgentAction::Heartbeat))
            .await
            .unwrap();
        tx.count_drop(2);
        rx.recv().await.unwrap();
        let _reporter = spawn_drop_reporter(tx.clone(), Duration::from_secs(1));
        let report = rx.recv().await.unwrap();
        assert_eq!(report.kind(), "sensor.overflow");
        match report.body {
            Body::Sensor(s) => {
                assert_eq!(s.count, 2);
                assert_eq!(s.sensor, "files");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
