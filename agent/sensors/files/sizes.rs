//! The last facts seen per path, so a delete or rename can say how big the file was after it is
//! gone. Bounded: the oldest remembered paths are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use bannin::event::ExportInfo;

/// What the sensor saw of a file the last time it examined it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    pub size: u64,
    pub inode: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
}

impl Facts {
    pub fn from_metadata(metadata: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Facts {
                size: metadata.len(),
                inode: Some(metadata.ino()),
                mode: Some(metadata.mode()),
                uid: Some(metadata.uid()),
            }
        }
        #[cfg(not(unix))]
        {
            Facts {
                size: metadata.len(),
                ..Facts::default()
            }
        }
    }
}

/// What is remembered of a path: its facts and, for a recognised export, what it held. The export
/// is boxed because few files are exports and every remembered path pays for the slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Remembered {
    pub facts: Facts,
    pub export: Option<Box<ExportInfo>>,
}

impl Remembered {
    pub fn new(facts: Facts, export: Option<ExportInfo>) -> Self {
        Remembered {
            facts,
            export: export.map(Box::new),
        }
    }
}

/// A map from path to [`Remembered`] facts holding at most `capacity` paths.
///
/// Insertion order is kept in a queue of (path, generation); an entry rewritten later gets a new
/// generation, so the stale queue slot is skipped when it reaches the front. The map and the
/// queue share each path's one allocation.
pub struct SizeCache {
    capacity: usize,
    entries: HashMap<Arc<Path>, (Remembered, u64)>,
    order: VecDeque<(Arc<Path>, u64)>,
    generation: u64,
}

impl SizeCache {
    pub fn new(capacity: usize) -> Self {
        SizeCache {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, path: &Path) -> Option<&Remembered> {
        self.entries.get(path).map(|(known, _)| known)
    }

    /// Every remembered path, for the rescan to look for those that are gone.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.entries.keys().map(|path| &**path)
    }

    pub fn insert(&mut self, path: &Path, known: Remembered) {
        self.generation += 1;
        let generation = self.generation;
        // A file written after its create keeps the name it is remembered by.
        let path: Arc<Path> = match self.entries.get_key_value(path) {
            Some((kept, _)) => Arc::clone(kept),
            None => Arc::from(path),
        };
        self.entries.insert(Arc::clone(&path), (known, generation));
        self.order.push_back((path, generation));
        while self.entries.len() > self.capacity {
            let Some((oldest, oldest_generation)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).map(|(_, g)| *g) == Some(oldest_generation) {
                self.entries.remove(&oldest);
            }
        }
        // Rewrites leave stale slots behind; compact before the queue outgrows the map by much.
        if self.order.len() > self.capacity.saturating_mul(2).max(64) {
            let entries = &self.entries;
            self.order
                .retain(|(path, g)| entries.get(path).map(|(_, current)| current) == Some(g));
        }
    }

    pub fn remove(&mut self, path: &Path) -> Option<Remembered> {
        self.entries.remove(path).map(|(known, _)| known)
    }

    /// Moves what is known under `from` to `to`: the file itself, or for a directory everything
    /// below it.
    pub fn rename(&mut self, from: &Path, to: &Path) {
        if let Some(facts) = self.remove(from) {
            self.insert(to, facts);
        }
        let below: Vec<Arc<Path>> = self
            .entries
            .keys()
            .filter(|path| path.starts_with(from) && &***path != from)
            .cloned()
            .collect();
        for old in below {
            if let (Some(facts), Ok(rest)) = (self.remove(&old), old.strip_prefix(from)) {
                self.insert(&to.join(rest), facts);
            }
        }
    }

    /// Forgets a directory and everything below it.
    pub fn remove_tree(&mut self, dir: &Path) {
        self.entries.retain(|path, _| !path.starts_with(dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(size: u64) -> Remembered {
        Remembered::new(
            Facts {
                size,
                ..Facts::default()
            },
            None,
        )
    }

    #[test]
    fn remembers_at_most_capacity_paths_forgetting_the_oldest() {
        let mut cache = SizeCache::new(2);
        cache.insert(Path::new("/a"), facts(1));
        cache.insert(Path::new("/b"), facts(2));
        cache.insert(Path::new("/a"), facts(3));
        cache.insert(Path::new("/c"), facts(4));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(Path::new("/b")), None);
        assert_eq!(cache.get(Path::new("/a")), Some(&facts(3)));
        assert_eq!(cache.get(Path::new("/c")), Some(&facts(4)));
        for i in 0..1000 {
            cache.insert(Path::new("/a"), facts(i));
        }
        assert!(cache.order.len() <= 64);
        assert_eq!(cache.get(Path::new("/a")), Some(&facts(999)));
    }

    #[test]
    fn renaming_a_directory_carries_the_files_below_it() {
        let mut cache = SizeCache::new(10);
        cache.insert(Path::new("/d/x.csv"), facts(10));
        cache.insert(Path::new("/d/sub/y.csv"), facts(20));
        cache.insert(Path::new("/dd/z.csv"), facts(30));
        cache.rename(Path::new("/d"), Path::new("/e"));
        assert_eq!(cache.get(Path::new("/e/x.csv")), Some(&facts(10)));
        assert_eq!(cache.get(Path::new("/e/sub/y.csv")), Some(&facts(20)));
        assert_eq!(cache.get(Path::new("/dd/z.csv")), Some(&facts(30)));
        assert_eq!(cache.get(Path::new("/d/x.csv")), None);
        cache.remove_tree(Path::new("/e"));
        assert_eq!(cache.len(), 1);
    }
}
