//! Bounded state: a map whose entries expire with time and whose size has a hard cap.
//!
//! Every detector keeps its state in a [`Window`], so no load of events can grow the collector's
//! memory without bound. Entries pushed out by the cap are counted: a detector that loses state
//! may miss an alert, and operators must be able to see that it happened.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use bannin::time::Timestamp;

struct Slot<V> {
    value: V,
    touched: Timestamp,
    generation: u64,
}

/// A map from keys to values, oldest-touched first out, at most `cap` entries.
pub(crate) struct Window<K, V> {
    map: HashMap<K, Slot<V>>,
    /// Keys in the order they were touched; stale positions (key touched again later) are skipped.
    order: VecDeque<(K, u64)>,
    cap: usize,
    /// Touches closer than this to the last one only update the value: they would move the
    /// entry by less than this in the expiry order, and skipping them saves a key clone.
    granularity: i64,
    next_generation: u64,
    evicted: u64,
}

impl<K: Eq + Hash + Clone, V> Window<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Window {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            granularity: 0,
            next_generation: 0,
            evicted: 0,
        }
    }

    /// A window whose touches within `granularity` of the last one do not reorder the entry.
    pub(crate) fn coarse(cap: usize, granularity: std::time::Duration) -> Self {
        let mut window = Window::new(cap);
        window.granularity = i64::try_from(granularity.as_nanos()).unwrap_or(i64::MAX);
        window
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Entries pushed out by the cap since the window was made.
    #[cfg(test)]
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|slot| &slot.value)
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key).map(|slot| &mut slot.value)
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|slot| slot.value)
    }

    /// Inserts or replaces `key`, counting it as touched at `now`; returns the entries the cap
    /// pushed out to make room, so the caller can say whose state was lost.
    pub(crate) fn insert(&mut self, key: K, value: V, now: Timestamp) -> Vec<(K, V)> {
        let mut pushed_out = Vec::new();
        if !self.map.contains_key(&key) {
            while self.map.len() >= self.cap {
                let Some(entry) = self.pop_oldest() else {
                    break;
                };
                self.evicted += 1;
                pushed_out.push(entry);
            }
        }
        let generation = self.bump();
        self.order.push_back((key.clone(), generation));
        self.map.insert(
            key,
            Slot {
                value,
                touched: now,
                generation,
            },
        );
        self.compact();
        pushed_out
    }

    /// Marks `key` as touched at `now`, so it expires later; returns its value.
    pub(crate) fn touch(&mut self, key: &K, now: Timestamp) -> Option<&mut V> {
        let generation = self.next_generation;
        let slot = self.map.get_mut(key)?;
        if now.as_nanos().saturating_sub(slot.touched.as_nanos()) < self.granularity {
            return self.map.get_mut(key).map(|slot| &mut slot.value);
        }
        slot.touched = slot.touched.max(now);
        slot.generation = generation;
        self.next_generation += 1;
        self.order.push_back((key.clone(), generation));
        self.compact();
        self.map.get_mut(key).map(|slot| &mut slot.value)
    }

    /// Removes and returns every entry last touched before `before`.
    pub(crate) fn expire(&mut self, before: Timestamp) -> Vec<(K, V)> {
        let mut gone = Vec::new();
        while let Some((key, generation)) = self.order.front() {
            match self.map.get(key) {
                Some(slot) if slot.generation == *generation => {
                    if slot.touched >= before {
                        break;
                    }
                    let key = key.clone();
                    self.order.pop_front();
                    if let Some(slot) = self.map.remove(&key) {
                        gone.push((key, slot.value));
                    }
                }
                _ => {
                    self.order.pop_front();
                }
            }
        }
        gone
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(key, slot)| (key, &slot.value))
    }

    fn bump(&mut self) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        generation
    }

    /// Removes the least recently touched entry, counting it as evicted.
    pub(crate) fn evict_oldest(&mut self) -> Option<(K, V)> {
        let entry = self.pop_oldest()?;
        self.evicted += 1;
        Some(entry)
    }

    fn pop_oldest(&mut self) -> Option<(K, V)> {
        while let Some((key, generation)) = self.order.pop_front() {
            if self
                .map
                .get(&key)
                .is_some_and(|slot| slot.generation == generation)
            {
                return self.map.remove(&key).map(|slot| (key, slot.value));
            }
        }
        None
    }

    /// Drops stale order positions once they outnumber live entries, keeping the queue bounded.
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.map.len() + 64 {
            return;
        }
        let map = &self.map;
        self.order
            .retain(|(key, generation)| map.get(key).is_some_and(|s| s.generation == *generation));
    }
}

/// Lost state, by the host it belonged to, until the engine reports it.
#[derive(Default)]
pub(crate) struct Losses {
    by_host: HashMap<String, u64>,
    total: u64,
}

impl Losses {
    pub(crate) fn add(&mut self, host: &str, count: u64) {
        if count == 0 {
            return;
        }
        self.total += count;
        match self.by_host.get_mut(host) {
            Some(n) => *n += count,
            None => {
                self.by_host.insert(host.to_string(), count);
            }
        }
    }

    /// Everything lost since the last call, by host.
    pub(crate) fn take(&mut self) -> Vec<(String, u64)> {
        self.by_host.drain().collect()
    }

    /// Entries lost since the engine started.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }
}

/// One [`Window`] per host under two caps: `per_host` entries for any one host, and `total` for
/// all of them, where making room takes from the host holding the most. So a host that floods the
/// detector pushes out its own state, never another host's, until every host is as full as it.
/// Whatever is pushed out is recorded in [`HostWindows::losses`] under the host that lost it.
pub(crate) struct HostWindows<K, V> {
    hosts: HashMap<String, Window<K, V>>,
    per_host: usize,
    total_cap: usize,
    total: usize,
    granularity: std::time::Duration,
    pub(crate) losses: Losses,
}

impl<K: Eq + Hash + Clone, V> HostWindows<K, V> {
    pub(crate) fn new(per_host: usize, total: usize, granularity: std::time::Duration) -> Self {
        HostWindows {
            hosts: HashMap::new(),
            per_host: per_host.max(1),
            total_cap: total.max(1),
            total: 0,
            granularity,
            losses: Losses::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.total
    }

    pub(crate) fn get(&self, host: &str, key: &K) -> Option<&V> {
        self.hosts.get(host)?.get(key)
    }

    pub(crate) fn get_mut(&mut self, host: &str, key: &K) -> Option<&mut V> {
        self.hosts.get_mut(host)?.get_mut(key)
    }

    pub(crate) fn touch(&mut self, host: &str, key: &K, now: Timestamp) -> Option<&mut V> {
        self.hosts.get_mut(host)?.touch(key, now)
    }

    pub(crate) fn remove(&mut self, host: &str, key: &K) -> Option<V> {
        let window = self.hosts.get_mut(host)?;
        let value = window.remove(key)?;
        self.total -= 1;
        if window.len() == 0 {
            self.hosts.remove(host);
        }
        Some(value)
    }

    /// Inserts or replaces `key` of `host`, making room under both caps first; returns the keys
    /// pushed out (of this host or the largest).
    pub(crate) fn insert(&mut self, host: &str, key: K, value: V, now: Timestamp) -> Vec<K> {
        let mut gone = Vec::new();
        let new = self.get(host, &key).is_none();
        let host_full = self
            .hosts
            .get(host)
            .is_some_and(|w| w.len() >= self.per_host);
        if new && self.total >= self.total_cap && !host_full {
            gone.extend(self.evict_from_largest());
        }
        let (per_host, granularity) = (self.per_host, self.granularity);
        let window = match self.hosts.get_mut(host) {
            Some(window) => window,
            None => self
                .hosts
                .entry(host.to_string())
                .or_insert_with(|| Window::coarse(per_host, granularity)),
        };
        let before = window.len();
        let pushed_out = window.insert(key, value, now);
        self.total = self.total + window.len() - before;
        self.losses
            .add(host, u64::try_from(pushed_out.len()).unwrap_or(u64::MAX));
        gone.extend(pushed_out.into_iter().map(|(key, _)| key));
        gone
    }

    fn evict_from_largest(&mut self) -> Option<K> {
        let host = self
            .hosts
            .iter()
            .max_by_key(|(_, w)| w.len())
            .map(|(h, _)| h.clone())?;
        let window = self.hosts.get_mut(&host)?;
        let evicted = window.evict_oldest().map(|(key, _)| key);
        if evicted.is_some() {
            self.total -= 1;
            self.losses.add(&host, 1);
        }
        if window.len() == 0 {
            self.hosts.remove(&host);
        }
        evicted
    }

    /// Removes and returns every entry, of any host, last touched before `before`.
    pub(crate) fn expire(&mut self, before: Timestamp) -> Vec<(K, V)> {
        let mut gone = Vec::new();
        for window in self.hosts.values_mut() {
            gone.extend(window.expire(before));
        }
        self.total -= gone.len();
        self.hosts.retain(|_, w| w.len() > 0);
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_evicts_the_oldest_touched_entry_and_counts_it() {
        let mut window = Window::new(2);
        window.insert("a", 1, Timestamp::from_secs(1));
        window.insert("b", 2, Timestamp::from_secs(2));
        window.touch(&"a", Timestamp::from_secs(3));
        window.insert("c", 3, Timestamp::from_secs(4));
        assert_eq!(window.len(), 2);
        assert!(
            window.get(&"b").is_none(),
            "b was the least recently touched"
        );
        assert_eq!(window.get(&"a"), Some(&1));
        assert_eq!(window.evicted(), 1);
    }

    #[test]
    fn expire_removes_only_entries_older_than_the_bound() {
        let mut window = Window::new(10);
        for i in 0..5 {
            window.insert(i, i, Timestamp::from_secs(i));
        }
        window.touch(&0, Timestamp::from_secs(10));
        let gone: Vec<_> = window
            .expire(Timestamp::from_secs(3))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(gone, vec![1, 2]);
        assert_eq!(window.len(), 3);
        assert_eq!(window.evicted(), 0);
    }

    #[test]
    fn coarse_touches_reorder_only_after_the_granularity() {
        let mut window = Window::coarse(2, std::time::Duration::from_secs(10));
        window.insert("a", 1, Timestamp::from_secs(0));
        window.insert("b", 2, Timestamp::from_secs(1));
        window.touch(&"a", Timestamp::from_secs(5));
        window.insert("c", 3, Timestamp::from_secs(6));
        assert!(
            window.get(&"a").is_none(),
            "a touch within 10 s does not refresh a"
        );
        window.touch(&"b", Timestamp::from_secs(20));
        window.insert("d", 4, Timestamp::from_secs(21));
        assert!(
            window.get(&"b").is_some(),
            "a touch after 10 s does refresh b"
        );
        assert!(window.get(&"c").is_none());
    }

    #[test]
    fn a_flooding_host_pushes_out_only_its_own_entries_and_they_are_counted() {
        let mut windows = HostWindows::new(3, 5, std::time::Duration::ZERO);
        windows.insert("victim", 1, "export", Timestamp::from_secs(0));
        for i in 0..100 {
            windows.insert("flood", 100 + i, "junk", Timestamp::from_secs(1 + i));
        }
        assert_eq!(windows.get("victim", &1), Some(&"export"));
        assert_eq!(windows.len(), 4);
        assert_eq!(windows.losses.take(), vec![("flood".to_string(), 97)]);
        // Full overall: room is made on the host holding the most, here the flood.
        windows.insert("b", 1, "x", Timestamp::from_secs(200));
        windows.insert("c", 1, "x", Timestamp::from_secs(201));
        assert_eq!(windows.len(), 5);
        assert_eq!(windows.get("victim", &1), Some(&"export"));
        assert_eq!(windows.losses.take(), vec![("flood".to_string(), 1)]);
        assert_eq!(windows.losses.total(), 98);
    }

    #[test]
    fn touching_one_key_many_times_keeps_the_queue_bounded() {
        let mut window = Window::new(4);
        window.insert("k", 0, Timestamp::from_secs(0));
        for i in 0..10_000 {
            window.touch(&"k", Timestamp::from_secs(i));
        }
        assert!(window.order.len() <= 2 * window.len() + 65);
    }
}
