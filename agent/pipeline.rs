//! The path from sensors to the spool.
//!
//! Every sensor holds an [`EventTx`]: a bounded channel into the spool writer. `send` waits when the
//! spool is behind (back-pressure, nothing lost). A sensor that must not block (a kernel queue that
//! would overflow instead) puts its events in a [`lossy`] queue, which counts what it drops.
//! The counts are reported as `sensor.overflow` events by [`spawn_drop_reporter`]: no loss is silent.
//!
//! Sending returns a [`Ticket`]; [`EventTx::committed`] waits until the spool holds that event. The
//! database sensor waits on its own tickets before saving read positions, and a stopping agent on
//! the ticket of its `agent.stop`, its last event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bannin::event::{Body, Event};
use tokio::sync::{mpsc, oneshot, watch};

use crate::sensors::Notice;

/// Capacity of the channel between all sensors and the spool writer.
pub const CHANNEL_CAPACITY: usize = 8192;

#[derive(Debug, thiserror::Error)]
#[error("the spool writer has stopped")]
pub struct Closed;

#[derive(Default)]
struct Drops {
    by_sensor: Mutex<BTreeMap<&'static str, u64>>,
    /// Wakes a reporter when a drop is counted: no reporter wakes while nothing is lost.
    counted: tokio::sync::Notify,
}

/// Commit tickets. Every event is numbered when it enters the channel; the number rides in the
/// event's `seq` (the spool renumbers it into the chain) and is settled by the spool writer once
/// the event is committed, or once its loss is recorded as `agent.dropped`. A sensor that keeps a
/// read position waits for the ticket of its own last event before saving the position, with no
/// polling and no timeout, so a saved position never runs ahead of events a crash could lose.
///
/// Numbers are handed out before the channel orders the events, so concurrent senders may enter
/// it out of number order: `through` is the highest number below which every ticket is settled,
/// and numbers settled above it wait in `ahead` until the gap closes.
pub struct Tickets {
    issued: AtomicU64,
    settled: Mutex<Settled>,
    through: watch::Sender<u64>,
}

#[derive(Default)]
struct Settled {
    through: u64,
    ahead: BTreeSet<u64>,
}

impl Default for Tickets {
    fn default() -> Self {
        Tickets {
            issued: AtomicU64::new(0),
            settled: Mutex::new(Settled::default()),
            through: watch::Sender::new(0),
        }
    }
}

impl Tickets {
    fn issue(&self) -> u64 {
        self.issued.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Called by the spool writer with the ticket numbers (pre-spool `seq`) of events it committed
    /// or recorded as dropped; zero (an event that never went through [`EventTx`]) is ignored.
    pub fn settle(&self, numbers: impl IntoIterator<Item = u64>) {
        let mut numbers: Vec<u64> = numbers.into_iter().filter(|&n| n > 0).collect();
        if numbers.is_empty() {
            return;
        }
        numbers.sort_unstable();
        let mut settled = self
            .settled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for n in numbers {
            if n > settled.through {
                settled.ahead.insert(n);
            }
        }
        let mut through = settled.through;
        while settled.ahead.remove(&(through + 1)) {
            through += 1;
        }
        settled.through = through;
        drop(settled);
        self.through.send_if_modified(|current| {
            let moved = through > *current;
            *current = through;
            moved
        });
    }
}

/// What [`EventTx::send`] returns: the event's place in the commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// A sensor's handle on the spool writer.
#[derive(Clone)]
pub struct EventTx {
    tx: mpsc::Sender<Event>,
    host: Arc<str>,
    #[cfg_attr(not(any(target_os = "linux", test)), allow(dead_code))]
    sensor: &'static str,
    drops: Arc<Drops>,
    tickets: Arc<Tickets>,
}

impl EventTx {
    /// The host, shared by every event rather than copied into each.
    pub fn shared_host(&self) -> Arc<str> {
        Arc::clone(&self.host)
    }

    /// The same channel, with drops counted under another sensor's name.
    pub fn for_sensor(&self, sensor: &'static str) -> EventTx {
        EventTx {
            sensor,
            ..self.clone()
        }
    }

    /// Sends an event that happened now, waiting while the spool is behind. The ticket says when it
    /// is committed ([`Self::committed`]); most senders need not ask.
    pub async fn send(&self, body: impl Into<Body>) -> Result<Ticket, Closed> {
        self.send_event(Event::now(Arc::clone(&self.host), body))
            .await
    }

    /// Sends a fully built event (its own timestamp), waiting while the spool is behind.
    pub async fn send_event(&self, mut event: Event) -> Result<Ticket, Closed> {
        let number = self.tickets.issue();
        event.seq = number;
        if self.tx.send(event).await.is_err() {
            // Never entered the channel: nothing to wait for.
            self.tickets.settle([number]);
            return Err(Closed);
        }
        Ok(Ticket(number))
    }

    /// Sends fully built events in order, taking them out of `events`, waiting while the spool
    /// is behind. The spool writer is woken once for the lot, not once per event.
    pub async fn send_events(&self, events: &mut Vec<Event>) -> Result<(), Closed> {
        while !events.is_empty() {
            let count = events.len().min(self.tx.max_capacity());
            // Nothing is numbered before room for all of them is held: a closed channel leaves
            // no ticket unsettled.
            let permits = self.tx.reserve_many(count).await.map_err(|_| Closed)?;
            for (permit, mut event) in permits.zip(events.drain(..count)) {
                event.seq = self.tickets.issue();
                permit.send(event);
            }
        }
        Ok(())
    }

    /// Sends from a thread outside the runtime, waiting while the spool is behind.
    #[cfg(target_os = "linux")]
    pub fn blocking_send(&self, body: impl Into<Body>) -> Result<Ticket, Closed> {
        let number = self.tickets.issue();
        let mut event = Event::now(Arc::clone(&self.host), body);
        event.seq = number;
        if self.tx.blocking_send(event).is_err() {
            self.tickets.settle([number]);
            return Err(Closed);
        }
        Ok(Ticket(number))
    }

    /// Waits until the event of `ticket` (and every event numbered before it) is committed to the
    /// spool or recorded as dropped. No timeout: the spool writer settles every ticket it takes.
    pub async fn committed(&self, ticket: Ticket) {
        let mut through = self.tickets.through.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = through.wait_for(|&n| n >= ticket.0).await;
    }

    /// The ticket book the spool writer settles.
    pub fn tickets(&self) -> Arc<Tickets> {
        self.tickets.clone()
    }

    /// Counts events this sensor lost on its own side (a full internal queue). Only Linux's
    /// kernel sensors have such a queue.
    #[cfg(any(target_os = "linux", test))]
    pub fn count_drop(&self, count: u64) {
        // A panic elsewhere while the map was held leaves plain counts: still counted.
        let mut map = self
            .drops
            .by_sensor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *map.entry(self.sensor).or_default() += count;
        drop(map);
        self.drops.counted.notify_one();
    }
}

/// A bounded queue for a sensor that must never wait on the spool (a kernel reader whose own
/// buffer would overflow instead): a full queue drops the item and counts it under the sensor's
/// name, so the loss is reported as `sensor.overflow`. The receiving end is a plain
/// [`mpsc::Receiver`], read with back-pressure towards the spool (`recv` in a task,
/// `blocking_recv` in a thread).
#[cfg(any(target_os = "linux", test))]
pub fn lossy<T>(tx: &EventTx, capacity: usize) -> (LossySender<T>, mpsc::Receiver<T>) {
    let (queue, rx) = mpsc::channel(capacity.max(1));
    let sender = LossySender {
        queue,
        tx: tx.clone(),
    };
    (sender, rx)
}

/// The sending end of [`lossy`].
#[cfg(any(target_os = "linux", test))]
pub struct LossySender<T> {
    queue: mpsc::Sender<T>,
    tx: EventTx,
}

#[cfg(any(target_os = "linux", test))]
impl<T> Clone for LossySender<T> {
    fn clone(&self) -> Self {
        LossySender {
            queue: self.queue.clone(),
            tx: self.tx.clone(),
        }
    }
}

#[cfg(any(target_os = "linux", test))]
impl<T> LossySender<T> {
    /// Queues `item` without waiting; a full queue is a counted drop. Fails only once the
    /// receiving end is gone.
    pub fn push(&self, item: T) -> Result<(), Closed> {
        match self.queue.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.tx.count_drop(1);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }

    /// Counts items lost before they reached the queue (a kernel buffer that overflowed).
    pub fn count_drop(&self, count: u64) {
        self.tx.count_drop(count);
    }
}

/// A queue for a sensor that hands over its events in batches: one push, and at most one
/// wake-up of the receiving task, per batch rather than per event. (A receiver on another thread
/// that drains each event as it arrives would otherwise be woken again for the next one, and a
/// wake-up across threads costs more than the event.) The capacity counts events. Unlike
/// [`lossy`], a full queue makes the sender wait, dropping nothing: it is for a sensor behind a
/// kernel queue (fanotify, inotify), which then holds what comes, and whose own overflow, if it
/// comes, is reported and followed by a rescan that recovers what the lost events would have
/// said. A drop here would be followed by nothing.
pub fn waiting_batches<T>(capacity: usize) -> (BatchSender<T>, BatchReceiver<T>) {
    let capacity = capacity.max(1);
    // No batch is empty, so batches never outnumber the events they hold.
    let (queue, rx) = mpsc::channel(capacity);
    let queued = Arc::new(AtomicUsize::new(0));
    let spares = Arc::new(Mutex::new(Vec::new()));
    let sender = BatchSender {
        queue,
        queued: queued.clone(),
        capacity,
        spares: spares.clone(),
    };
    let receiver = BatchReceiver {
        rx,
        queued,
        taken: Vec::new().into_iter(),
        spares,
    };
    (sender, receiver)
}

/// The sending end of [`waiting_batches`].
pub struct BatchSender<T> {
    /// Bounded in events by `queued` and `capacity`, and so in batches too.
    queue: mpsc::Sender<Vec<T>>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    spares: Spares<T>,
}

/// Emptied batches handed back by the receiver ([`BatchReceiver::give_back`]) for the sender's
/// next ([`BatchSender::spare`]): in a burst the same few buffers go round, where a new one for
/// each batch (a large block: a batch of 256 events is 141 KiB) made the C allocator consolidate
/// its free lists every time, 9% of the file sensor's thread.
type Spares<T> = Arc<Mutex<Vec<Vec<T>>>>;

/// Emptied batches kept for reuse at most.
const SPARES: usize = 2;

impl<T> BatchSender<T> {
    /// An empty buffer for the next batch: one handed back, or a new one.
    pub fn spare(&self) -> Vec<T> {
        self.spares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// Queues `batch`, in order, waiting while the queue is full (a batch larger than the whole
    /// queue goes in parts). Call it from a thread of the sensor's own, never from the runtime.
    /// Fails only once the receiving end is gone.
    #[expect(
        clippy::disallowed_methods,
        reason = "the sensor's own thread waits for room, as the kernel's queue behind it does"
    )]
    pub fn push(&self, mut batch: Vec<T>) -> Result<(), Closed> {
        while !batch.is_empty() {
            if self.queue.is_closed() {
                return Err(Closed);
            }
            // The whole batch, or as much as the whole queue holds: waiting for room for all of
            // it keeps batches whole, where sending whatever room there is would make a stream
            // of batches of one or two events, each a wake-up of its own.
            let queued = self.queued.load(Ordering::Acquire);
            let room = batch.len().min(self.capacity);
            if self.capacity.saturating_sub(queued) < room {
                std::thread::sleep(ROOM_WAIT);
                continue;
            }
            if self
                .queued
                .compare_exchange_weak(queued, queued + room, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let rest = if room < batch.len() {
                batch.split_off(room)
            } else {
                Vec::new()
            };
            match self.queue.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(back)) => {
                    // Cannot happen while no batch is empty (batches never outnumber the events
                    // the queue holds); the batch waits for room like any other.
                    self.queued.fetch_sub(room, Ordering::AcqRel);
                    let mut back = back;
                    back.extend(rest);
                    batch = back;
                    std::thread::sleep(ROOM_WAIT);
                    continue;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.queued.fetch_sub(room, Ordering::AcqRel);
                    return Err(Closed);
                }
            }
            batch = rest;
        }
        Ok(())
    }
}

/// How long a sender waits before it looks for room in a full queue again.
const ROOM_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// The receiving end of [`waiting_batches`]: whole batches, or one item at a time.
pub struct BatchReceiver<T> {
    rx: mpsc::Receiver<Vec<T>>,
    queued: Arc<AtomicUsize>,
    /// The rest of a batch taken by [`Self::recv`].
    taken: std::vec::IntoIter<T>,
    spares: Spares<T>,
}

impl<T> BatchReceiver<T> {
    /// Hands an emptied batch back for the sender to fill again.
    pub fn give_back(&self, mut batch: Vec<T>) {
        batch.clear();
        let mut spares = self
            .spares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if spares.len() < SPARES && batch.capacity() > 0 {
            spares.push(batch);
        }
    }

    /// The next batch (what is left of one begun by [`Self::recv`] first); `None` once every
    /// sender is gone and the queue is empty.
    pub async fn recv_batch(&mut self) -> Option<Vec<T>> {
        if self.taken.len() > 0 {
            return Some(self.taken.by_ref().collect());
        }
        let batch = self.rx.recv().await?;
        Some(self.took(batch))
    }

    /// Frees the room in the queue that a batch just taken held.
    fn took(&self, batch: Vec<T>) -> Vec<T> {
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        batch
    }

    /// The next item, if one is queued now.
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Result<T, mpsc::error::TryRecvError> {
        loop {
            if let Some(item) = self.taken.next() {
                return Ok(item);
            }
            let batch = self.rx.try_recv()?;
            self.taken = self.took(batch).into_iter();
        }
    }

    /// The next item.
    #[cfg(test)]
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.taken.next() {
                return Some(item);
            }
            let batch = self.rx.recv().await?;
            self.taken = self.took(batch).into_iter();
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
        tickets: Arc::new(Tickets::default()),
    };
    (tx, rx)
}

/// For tests without a spool writer: settles each event's ticket once it is handed to the test,
/// so sensors that wait for their tickets keep going.
#[cfg(test)]
pub fn settle_on_take(tx: &EventTx, mut rx: mpsc::Receiver<Event>) -> mpsc::Receiver<Event> {
    let tickets = tx.tickets();
    let (forward, taken) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let number = event.seq;
            if forward.send(event).await.is_err() {
                return;
            }
            tickets.settle([number]);
        }
    });
    taken
}

/// The task that turns drop counts into `sensor.overflow` events. [`DropReporter::stop`] reports
/// what was counted since the last tick, so a stopping agent reports every drop before its
/// `agent.stop`; dropping the handle does the same without waiting.
pub struct DropReporter {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl DropReporter {
    /// Reports the counts not yet reported and waits until those reports are in the channel.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Turns the drop counts into `sensor.overflow` events as drops are counted, at most once every
/// `interval`, sent with back-pressure so the report itself is never dropped. Asleep while
/// nothing is lost.
pub fn spawn_drop_reporter(tx: EventTx, interval: Duration) -> DropReporter {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            // Only the waits are raced: a report, once its counts are taken, is always sent.
            let last = tokio::select! {
                () = tx.drops.counted.notified() => false,
                _ = &mut stopped => true,
            };
            if report_drops(&tx).await.is_err() || last {
                return;
            }
            // Drops counted meanwhile wait for the next report (their wake is kept).
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = &mut stopped => {
                    let _ = report_drops(&tx).await;
                    return;
                }
            }
        }
    });
    DropReporter {
        stop: Some(stop),
        task,
    }
}

/// Sends one `sensor.overflow` event per sensor that counted drops since the last report.
async fn report_drops(tx: &EventTx) -> Result<(), Closed> {
    // A panic elsewhere while the map was held leaves plain counts behind: still reported.
    let taken = std::mem::take(
        &mut *tx
            .drops
            .by_sensor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    for (sensor, count) in taken {
        let message = format!("{count} events dropped because the spool could not keep up");
        let event = Notice::overflow(sensor, message).count(count).logged();
        tx.send(event).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bannin::event::{AgentAction, AgentEvent};

    #[tokio::test]
    async fn a_ticket_is_committed_only_when_every_earlier_number_is_settled() {
        let (tx, mut rx) = channel("h");
        let first = tx
            .send(AgentEvent::new(AgentAction::Heartbeat))
            .await
            .unwrap();
        let second = tx
            .send(AgentEvent::new(AgentAction::Heartbeat))
            .await
            .unwrap();
        let numbers = [rx.recv().await.unwrap().seq, rx.recv().await.unwrap().seq];
        let tickets = tx.tickets();
        // Settled out of order: the later number alone commits nothing.
        tickets.settle([numbers[1]]);
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.committed(second).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(*tickets.through.borrow(), 0);
        tickets.settle([numbers[0]]);
        waiting.await.unwrap();
        tx.committed(first).await;
        assert_eq!(*tickets.through.borrow(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_lossy_queue_counts_the_drop_and_a_closed_one_says_so() {
        let (tx, mut spool) = channel("h");
        let (queue, mut rx) = lossy::<u32>(&tx.for_sensor("network"), 1);
        queue.push(1).unwrap();
        queue.push(2).unwrap();
        queue.count_drop(3);
        assert_eq!(rx.recv().await, Some(1));
        let _reporter = spawn_drop_reporter(tx.clone(), Duration::from_secs(1));
        let report = spool.recv().await.unwrap();
        match report.body {
            Body::Sensor(s) => {
                assert_eq!(s.count, 4);
                assert_eq!(s.sensor, "network");
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(rx);
        assert!(queue.push(5).is_err());
    }

    /// A batch that does not fit waits for room for all of it; one larger than the whole queue
    /// goes in parts of the queue's size; all in order, nothing dropped; and a sender whose
    /// receiver is gone fails, even while it waits.
    #[tokio::test]
    async fn a_batch_that_does_not_fit_waits_whole_and_a_larger_one_goes_in_parts() {
        let (queue, mut rx) = waiting_batches::<u32>(5);
        queue.push(vec![1, 2, 3]).unwrap();
        let sender = std::thread::spawn(move || {
            // Room for two: waits until 1, 2 and 3 are taken, then goes whole.
            queue.push(vec![4, 5, 6, 7]).unwrap();
            // Larger than the queue: five, then the rest once those are taken.
            queue.push((8..=14).collect()).unwrap();
            queue
        });
        let first = rx.recv_batch().await.unwrap();
        assert_eq!(first, vec![1, 2, 3]);
        // An emptied batch goes back to the sender for its next.
        rx.give_back(first);
        assert_eq!(rx.recv_batch().await, Some(vec![4, 5, 6, 7]));
        assert_eq!(rx.recv_batch().await, Some(vec![8, 9, 10, 11, 12]));
        assert_eq!(rx.recv_batch().await, Some(vec![13, 14]));
        let queue = tokio::task::spawn_blocking(move || sender.join().unwrap())
            .await
            .unwrap();
        let spare = queue.spare();
        assert!(spare.is_empty() && spare.capacity() >= 3);
        assert_eq!(queue.spare().capacity(), 0);
        // Full again, then the receiver goes: the waiting sender fails.
        queue.push(vec![8, 9, 10, 11, 12]).unwrap();
        let waiting = std::thread::spawn(move || queue.push(vec![13]));
        drop(rx);
        let result = tokio::task::spawn_blocking(move || waiting.join().unwrap())
            .await
            .unwrap();
        assert!(result.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn counted_drops_are_reported_as_sensor_overflow() {
        let (tx, mut rx) = mpsc::channel(1);
        let tx = EventTx {
            tx,
            host: Arc::from("h"),
            sensor: "files",
            drops: Arc::new(Drops::default()),
            tickets: Arc::new(Tickets::default()),
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

    #[tokio::test(start_paused = true)]
    async fn a_stopping_reporter_reports_what_was_counted_since_its_last_tick() {
        let (tx, mut rx) = channel("h");
        let reporter = spawn_drop_reporter(tx.for_sensor("net"), Duration::from_secs(3600));
        // The first tick fires at once and finds nothing; the next is an hour away.
        tokio::task::yield_now().await;
        tx.for_sensor("net").count_drop(3);
        reporter.stop().await;
        let report = rx.try_recv().unwrap();
        match report.body {
            Body::Sensor(s) => {
                assert_eq!(s.count, 3);
                assert_eq!(s.sensor, "net");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(rx.try_recv().is_err());
    }
}
