//! A small map by name, for a container's networks and the labels the
//! planner reads: a handful of entries each, where a `BTreeMap` node costs
//! hundreds of bytes per container even for one entry. Entries are kept
//! sorted by name, so iteration is in the same order as a `BTreeMap`'s.

use std::{fmt, ops::Index};

#[derive(Clone, PartialEq, Eq)]
pub struct SmallMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for SmallMap<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<V> SmallMap<V> {
    fn position(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get<Q: AsRef<str> + ?Sized>(&self, key: &Q) -> Option<&V> {
        let i = self.position(key.as_ref()).ok()?;
        Some(&self.entries[i].1)
    }

    pub fn get_mut<Q: AsRef<str> + ?Sized>(&mut self, key: &Q) -> Option<&mut V> {
        let i = self.position(key.as_ref()).ok()?;
        Some(&mut self.entries[i].1)
    }

    pub fn contains_key<Q: AsRef<str> + ?Sized>(&self, key: &Q) -> bool {
        self.position(key.as_ref()).is_ok()
    }

    /// Like `BTreeMap::insert`: the old value of `key`, if any.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&String, &V)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl<V> FromIterator<(String, V)> for SmallMap<V> {
    /// Sorted by key; of equal keys the last wins, as in a `BTreeMap`.
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut entries: Vec<(String, V)> = iter.into_iter().collect();
        // Stable: equal keys keep their order, and the last is kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.reverse();
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        entries.reverse();
        entries.shrink_to_fit();
        Self { entries }
    }
}

impl<V, const N: usize> From<[(String, V); N]> for SmallMap<V> {
    fn from(entries: [(String, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<V> IntoIterator for SmallMap<V> {
    type Item = (String, V);
    type IntoIter = std::vec::IntoIter<(String, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, V> IntoIterator for &'a SmallMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, V)>,
        fn(&'a (String, V)) -> (&'a String, &'a V),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<V, Q: AsRef<str> + ?Sized> Index<&Q> for SmallMap<V> {
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        let key = key.as_ref();
        self.get(key)
            .unwrap_or_else(|| panic!("no entry {key:?} in the map"))
    }
}

impl<V: fmt::Debug> fmt::Debug for SmallMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn behaves_as_a_btree_map_of_the_same_entries() {
        let pairs = [("b", 1), ("a", 2), ("c", 3), ("a", 4)].map(|(k, v)| (k.to_owned(), v));
        let small: SmallMap<i32> = pairs.clone().into_iter().collect();
        let btree: BTreeMap<String, i32> = pairs.into_iter().collect();
        assert_eq!(
            small.iter().collect::<Vec<_>>(),
            btree.iter().collect::<Vec<_>>()
        );
        assert_eq!(small.len(), 3);
        assert_eq!(small["a"], 4, "the last of equal keys wins");
        assert_eq!(small.get("z"), None);
        assert!(small.contains_key(&"c".to_owned()));
        let mut small = small;
        assert_eq!(small.insert("a".into(), 5), Some(4));
        assert_eq!(small.insert("0".into(), 6), None);
        assert_eq!(small.keys().collect::<Vec<_>>(), ["0", "a", "b", "c"]);
        *small.get_mut("b").unwrap() = 7;
        small.retain(|k, _| k != "c");
        assert_eq!(small.values().copied().collect::<Vec<_>>(), [6, 5, 7]);
    }
}
