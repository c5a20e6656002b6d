//! The containers pending events named, which the next pass serves first.

use std::{collections::HashMap, time::SystemTime};

use crate::model::{ContainerId, IdSet};

/// Past this many ids, [`Pending::clear`] frees the table.
const KEEP_CAPACITY: usize = 1024;

/// Container ids with the time of the first event that named each, plus
/// whether an event named no usable id. Keys are fixed-size: a storm of
/// events grows this by containers, and allocates nothing per event.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    ids: HashMap<ContainerId, SystemTime, foldhash::fast::RandomState>,
    /// The first event that named no container, or not by a full id: the
    /// next pass lists every container, as it cannot list that one alone.
    unnamed: Option<SystemTime>,
}

impl Pending {
    /// Notes an event naming `id` at `at`; an earlier event's time stays.
    pub fn add(&mut self, id: ContainerId, at: SystemTime) {
        self.ids.entry(id).or_insert(at);
    }

    /// Notes an event naming `id` as Docker wrote it: not a full id (none
    /// at all, or malformed) makes it an unnamed one.
    pub fn add_text(&mut self, id: &str, at: SystemTime) {
        match ContainerId::parse(id) {
            Ok(id) => self.add(id, at),
            Err(_) => self.add_unnamed(at),
        }
    }

    /// Notes an event that names no usable container id.
    pub fn add_unnamed(&mut self, at: SystemTime) {
        self.unnamed.get_or_insert(at);
    }

    /// Moves everything in `other` here, keeping the earlier times already
    /// here.
    pub fn take_from(&mut self, other: &mut Pending) {
        if self.ids.is_empty() {
            // The table itself moves: after a storm, one large table
            // between the two sets, not one each.
            std::mem::swap(&mut self.ids, &mut other.ids);
        }
        for (id, at) in other.ids.drain() {
            self.add(id, at);
        }
        if let Some(at) = other.unnamed.take() {
            self.add_unnamed(at);
        }
        other.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.unnamed.is_none()
    }

    /// The distinct containers named.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn contains(&self, id: &ContainerId) -> bool {
        self.ids.contains_key(id)
    }

    /// Whether an event named the container whose id is `id`.
    pub fn names(&self, id: &str) -> bool {
        ContainerId::parse(id).is_ok_and(|id| self.contains(&id))
    }

    /// Whether every event named a container by its full id.
    pub fn all_named(&self) -> bool {
        self.unnamed.is_none()
    }

    /// The time of the first event naming the container `id`, which is no
    /// longer pending.
    pub fn take(&mut self, id: &str) -> Option<SystemTime> {
        self.ids.remove(&ContainerId::parse(id).ok()?)
    }

    /// The ids named, as text.
    pub fn id_set(&self) -> IdSet {
        self.ids.keys().map(ContainerId::to_string).collect()
    }

    /// Empties the set; a table a storm grew is freed, not kept.
    pub fn clear(&mut self) {
        if self.ids.capacity() > KEEP_CAPACITY {
            self.ids = HashMap::default();
        } else {
            self.ids.clear();
        }
        self.unnamed = None;
    }
}

impl<'a> FromIterator<&'a str> for Pending {
    /// Events naming these ids, now.
    fn from_iter<I: IntoIterator<Item = &'a str>>(ids: I) -> Self {
        let now = SystemTime::now();
        let mut pending = Self::default();
        ids.into_iter().for_each(|id| pending.add_text(id, now));
        pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[test]
    fn keeps_each_containers_first_event_and_notes_unnamed_ones() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let t1 = t0 + Duration::from_secs(1);
        let mut pending = Pending::default();
        assert!(pending.is_empty() && pending.all_named());
        pending.add_text(&id(1), t0);
        pending.add_text(&id(1), t1);
        assert_eq!(pending.len(), 1);
        assert!(pending.names(&id(1)) && !pending.names(&id(2)));
        assert!(!pending.names("not an id"));
        for unusable in ["", "abc123", &id(0xab).to_uppercase()] {
            let mut p = Pending::default();
            p.add_text(unusable, t0);
            assert!(!p.is_empty() && !p.all_named(), "{unusable:?}");
            assert_eq!(p.len(), 0);
        }
        let mut later = Pending::default();
        later.add_text(&id(1), t1);
        later.add_text(&id(2), t1);
        later.add_unnamed(t1);
        pending.take_from(&mut later);
        assert!(later.is_empty());
        assert_eq!(pending.len(), 2);
        assert!(!pending.all_named());
        assert_eq!(pending.id_set(), IdSet::from_iter([id(1), id(2)]));
        assert_eq!(pending.take(&id(1)), Some(t0), "the first event's time");
        assert_eq!(pending.take(&id(1)), None);
        assert_eq!(pending.take("not an id"), None);
        pending.clear();
        assert!(pending.is_empty());
        let named: Pending = [id(4).as_str(), ""].into_iter().collect();
        assert!(named.names(&id(4)) && !named.all_named());
    }

    #[test]
    fn a_storms_table_moves_between_the_sets_and_is_then_freed() {
        let at = SystemTime::UNIX_EPOCH;
        let mut dirty = Pending::default();
        for n in 0..4 * KEEP_CAPACITY as u32 {
            dirty.add(ContainerId::parse(&format!("{n:064x}")).unwrap(), at);
        }
        let mut pending = Pending::default();
        pending.take_from(&mut dirty);
        assert_eq!(pending.len(), 4 * KEEP_CAPACITY);
        assert!(dirty.is_empty() && dirty.ids.capacity() <= KEEP_CAPACITY);
        pending.clear();
        assert!(pending.is_empty() && pending.ids.capacity() <= KEEP_CAPACITY);
    }
}
