//! L1: the loaded modules held in process, least recently used first out, bounded by
//! bytes and by count; and the modules that failed to load, bounded by count.
//!
//! Entries are `Arc`s: evicting one drops only the cache's reference, so a job still
//! running it keeps it until the job ends, and the next job of that module loads it
//! again (from L2 or L3, without compiling). An entry's weight is what it holds (wasm
//! bytes plus each engine's artifact as it is loaded), and can grow after insertion.

use std::collections::HashMap;
use std::hash::Hash;

/// Failed loads remembered at most (oldest forgotten first).
pub const MAX_FAILED: usize = 1024;

struct Entry<V> {
    value: V,
    bytes: u64,
    used: u64,
}

/// A least-recently-used map bounded by total weight and entry count, with a bounded
/// memory of failures.
pub struct Lru<K, V, F> {
    max_bytes: u64,
    max_count: usize,
    entries: HashMap<K, Entry<V>>,
    failed: HashMap<K, (F, u64)>,
    held: u64,
    clock: u64,
}

impl<K: Eq + Hash + Clone, V: Clone, F: Clone> Lru<K, V, F> {
    /// An empty cache holding at most `max_bytes` of weight in at most `max_count`
    /// entries (at least one entry is always kept, however heavy).
    pub fn new(max_bytes: u64, max_count: usize) -> Self {
        Lru {
            max_bytes,
            max_count: max_count.max(1),
            entries: HashMap::new(),
            failed: HashMap::new(),
            held: 0,
            clock: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The value under `key`, now the most recently used; or the failure remembered
    /// for it.
    pub fn get(&mut self, key: &K) -> Option<Result<V, F>> {
        let now = self.tick();
        if let Some(entry) = self.entries.get_mut(key) {
            entry.used = now;
            return Some(Ok(entry.value.clone()));
        }
        self.failed.get(key).map(|(f, _)| Err(f.clone()))
    }

    /// Holds `value` under `key` with weight `bytes`, evicting the least recently used
    /// entries past the bounds. Returns how many were evicted.
    pub fn insert(&mut self, key: K, value: V, bytes: u64) -> usize {
        let used = self.tick();
        self.failed.remove(&key);
        if let Some(old) = self
            .entries
            .insert(key.clone(), Entry { value, bytes, used })
        {
            self.held -= old.bytes;
        }
        self.held += bytes;
        self.evict(&key)
    }

    /// Adds `bytes` to the weight of the entry under `key` (if still held), evicting
    /// others past the bounds. Returns how many were evicted.
    pub fn grow(&mut self, key: &K, bytes: u64) -> usize {
        match self.entries.get_mut(key) {
            Some(entry) => {
                entry.bytes += bytes;
                self.held += bytes;
                self.evict(key)
            }
            None => 0,
        }
    }

    /// Remembers that `key` failed to load.
    pub fn fail(&mut self, key: K, failure: F) {
        let now = self.tick();
        if self.failed.len() >= MAX_FAILED
            && !self.failed.contains_key(&key)
            && let Some(oldest) = self
                .failed
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            self.failed.remove(&oldest);
        }
        self.failed.insert(key, (failure, now));
    }

    /// Evicts least recently used entries other than `keep` until within bounds.
    fn evict(&mut self, keep: &K) -> usize {
        let mut evicted = 0;
        while self.held > self.max_bytes || self.entries.len() > self.max_count {
            let victim = self
                .entries
                .iter()
                .filter(|(k, _)| *k != keep)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            if let Some(entry) = self.entries.remove(&victim) {
                self.held -= entry.bytes;
                evicted += 1;
            }
        }
        evicted
    }

    /// Drops whatever is held or remembered under `key`.
    pub fn remove(&mut self, key: &K) {
        if let Some(entry) = self.entries.remove(key) {
            self.held -= entry.bytes;
        }
        self.failed.remove(key);
    }

    /// Weight held.
    pub fn bytes(&self) -> u64 {
        self.held
    }

    /// Entries held (failures not counted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    type Cache = Lru<u32, Arc<String>, String>;

    #[test]
    fn the_least_recently_used_goes_first_by_count() {
        let mut lru = Cache::new(u64::MAX, 2);
        lru.insert(1, Arc::new("one".into()), 1);
        lru.insert(2, Arc::new("two".into()), 1);
        // 1 is used, so 2 is now the least recent.
        assert!(lru.get(&1).is_some());
        assert_eq!(lru.insert(3, Arc::new("three".into()), 1), 1);
        assert!(lru.get(&2).is_none());
        assert!(lru.get(&1).is_some() && lru.get(&3).is_some());
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn eviction_by_bytes_keeps_what_jobs_hold() {
        let mut lru = Cache::new(100, 10);
        let held = Arc::new("running".to_owned());
        lru.insert(1, held.clone(), 60);
        lru.insert(2, Arc::new("b".into()), 30);
        assert_eq!(lru.bytes(), 90);
        // 1 is the least recently used: it goes, though a job still holds it.
        assert_eq!(lru.insert(3, Arc::new("c".into()), 50), 1);
        assert!(lru.get(&1).is_none());
        assert_eq!(lru.bytes(), 80);
        assert_eq!(*held, "running");
        assert_eq!(Arc::strong_count(&held), 1);
        // Growing an entry (a second engine's artifact) evicts others too.
        lru.get(&3);
        assert_eq!(lru.grow(&3, 40), 1);
        assert!(lru.get(&2).is_none());
        assert_eq!(lru.bytes(), 90);
        // One entry heavier than the bound is still kept (the one just loaded).
        assert_eq!(lru.insert(4, Arc::new("huge".into()), 500), 1);
        assert_eq!(lru.len(), 1);
        assert_eq!(lru.bytes(), 500);
    }

    #[test]
    fn failures_are_remembered_and_bounded() {
        let mut lru = Cache::new(100, 10);
        for k in 0..(MAX_FAILED as u32 + 5) {
            lru.fail(k, format!("bad {k}"));
        }
        assert!(lru.get(&0).is_none(), "the oldest failure is forgotten");
        assert!(matches!(lru.get(&(MAX_FAILED as u32 + 4)), Some(Err(_))));
        // A later good load replaces the failure.
        lru.insert(7, Arc::new("ok".into()), 1);
        assert!(matches!(lru.get(&7), Some(Ok(_))));
    }
}
