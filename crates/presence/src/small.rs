//! A map and a set for the few topics one connection or user (local or remote) is in (at
//! most `presence.max_subscriptions_per_connection` per connection) and a user's few
//! connections here: a `Vec` searched linearly costs one small allocation, where a `HashMap` costs a
//! table of at least four buckets plus control bytes for every connection (BENCHMARKS.md,
//! presence memory).
//!
//! Most connections and users are in exactly one topic, and most users have one connection:
//! the set keeps a single element inline, and the map's first insertion allocates room for
//! one element only (a plain `Vec::push` would allocate four: 128 bytes instead of 32 for a
//! user's memberships); later ones grow as a `Vec` does.

use std::borrow::Borrow;

/// Appends `value`, allocating room for exactly one element if `v` has none.
fn push_first_exact<T>(v: &mut Vec<T>, value: T) {
    if v.capacity() == 0 {
        v.reserve_exact(1);
    }
    v.push(value);
}

/// A set kept in insertion order (until a removal, which moves the last element into the gap).
///
/// One element is kept inline, with no allocation: most connections are in one topic and
/// most users have one connection. More are kept in a `Vec`. The `Vec`'s capacity has room
/// for the tag, so the set is no larger than a `Vec`.
#[derive(Debug, Clone)]
pub(crate) enum SmallSet<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> Default for SmallSet<T> {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl<T> SmallSet<T> {
    fn as_slice(&self) -> &[T] {
        match self {
            Self::One(v) => std::slice::from_ref(v),
            Self::Many(v) => v,
        }
    }
}

impl<T: PartialEq> SmallSet<T> {
    pub(crate) fn contains<Q: PartialEq + ?Sized>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.as_slice().iter().any(|v| v.borrow() == value)
    }

    /// Adds `value`; false if it was there already.
    pub(crate) fn insert(&mut self, value: T) -> bool {
        if self.contains(&value) {
            return false;
        }
        match self {
            Self::Many(v) if v.is_empty() => *self = Self::One(value),
            Self::Many(v) => v.push(value),
            Self::One(_) => {
                if let Self::One(first) = std::mem::take(self) {
                    *self = Self::Many(vec![first, value]);
                }
            }
        }
        true
    }

    /// Removes `value`; false if it was not there.
    pub(crate) fn remove<Q: PartialEq + ?Sized>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        match self {
            Self::One(v) if (*v).borrow() == value => *self = Self::default(),
            Self::One(_) => return false,
            Self::Many(v) => {
                let Some(i) = v.iter().position(|v| v.borrow() == value) else { return false };
                v.swap_remove(i);
                if v.len() == 1 {
                    if let Some(last) = v.pop() {
                        *self = Self::One(last);
                    }
                }
            }
        }
        true
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, T> {
        self.as_slice().iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl<T> IntoIterator for SmallSet<T> {
    type Item = T;
    type IntoIter = std::iter::Chain<std::option::IntoIter<T>, std::vec::IntoIter<T>>;
    fn into_iter(self) -> Self::IntoIter {
        match self {
            Self::One(v) => Some(v).into_iter().chain(Vec::new()),
            Self::Many(v) => None.into_iter().chain(v),
        }
    }
}

impl<'a, T> IntoIterator for &'a SmallSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// A map kept in insertion order.
#[derive(Debug, Clone)]
pub(crate) struct SmallMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: PartialEq, V> SmallMap<K, V> {
    pub(crate) fn get<Q: PartialEq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.0.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v)
    }

    pub(crate) fn get_mut<Q: PartialEq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.0.iter_mut().find(|(k, _)| k.borrow() == key).map(|(_, v)| v)
    }

    pub(crate) fn contains_key<Q: PartialEq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(key).is_some()
    }

    /// The value for `key`, inserting `value` first if there is none.
    pub(crate) fn get_or_insert(&mut self, key: K, value: V) -> &mut V {
        let i = match self.0.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                push_first_exact(&mut self.0, (key, value));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    pub(crate) fn remove<Q: PartialEq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.0.iter().position(|(k, _)| k.borrow() == key)?;
        Some(self.0.swap_remove(i).1)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_map_behave_like_the_std_ones() {
        let mut s: SmallSet<std::sync::Arc<str>> = SmallSet::default();
        assert!(s.insert("a".into()) && s.insert("b".into()) && !s.insert("a".into()));
        assert!(s.contains("a") && s.len() == 2);
        assert!(s.remove("a") && !s.remove("a") && !s.contains("a"));
        assert_eq!(s.iter().map(|t| &**t).collect::<Vec<_>>(), ["b"]);

        let mut m: SmallMap<std::sync::Arc<str>, u32> = SmallMap::default();
        *m.get_or_insert("t".into(), 0) += 1;
        *m.get_or_insert("t".into(), 0) += 1;
        *m.get_or_insert("u".into(), 7) += 1;
        assert_eq!((m.get("t"), m.get("u"), m.get("v")), (Some(&2), Some(&8), None));
        *m.get_mut("u").unwrap() = 1;
        assert!(m.contains_key("u"));
        assert_eq!(m.keys().count(), 2);
        assert_eq!(m.remove("t"), Some(2));
        assert_eq!(m.remove("t"), None);
        assert!(!m.is_empty());
        m.remove("u");
        assert!(m.is_empty());
    }

    #[test]
    fn one_element_is_inline_and_the_first_map_insertion_allocates_one_slot() {
        use std::sync::Arc;
        assert_eq!(std::mem::size_of::<SmallSet<Arc<str>>>(), std::mem::size_of::<Vec<Arc<str>>>());
        assert_eq!(std::mem::size_of::<SmallSet<u64>>(), std::mem::size_of::<Vec<u64>>());
        let mut s: SmallSet<u64> = SmallSet::default();
        assert!(s.insert(1) && matches!(s, SmallSet::One(1)));
        assert!(s.insert(2) && s.insert(3) && !s.insert(1));
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(s.clone().into_iter().collect::<Vec<_>>(), [1, 2, 3]);
        assert!(s.remove(&1) && s.remove(&3) && !s.remove(&1));
        assert!(matches!(s, SmallSet::One(2)) && s.contains(&2) && s.len() == 1);
        assert!(s.remove(&2) && s.is_empty() && !s.contains(&2));
        assert!(s.insert(4) && matches!(s, SmallSet::One(4)));
        assert_eq!(s.into_iter().collect::<Vec<_>>(), [4]);

        let mut m: SmallMap<u64, u64> = SmallMap::default();
        m.get_or_insert(1, 1);
        assert_eq!(m.0.capacity(), 1);
    }
}
