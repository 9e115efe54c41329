//! watch's picture of the target: per collection, what each document holds
//! as far as the mirror knows (its content hash and source file), so a
//! changed file is compared without reading the collection again.
//!
//! A document is known by a 128-bit hash of its id ([`IdKey`], XXH3 seeded at
//! random per process), not by the id itself: at a million users the ids
//! alone were 64 MB. A full scan builds a collection's picture in bulk as a
//! list sorted by that hash (48 bytes a document, no table's slack); watch's
//! later changes go to a small table beside it ([`Coll::set`],
//! [`Coll::remove`]) that is folded into the list once it holds an eighth
//! of it, so a change never moves a million entries.
//!
//! What the picture cannot say is which ids it holds: a caller that needs
//! them (the documents of a file the memo does not cover) asks the target.

use std::collections::HashMap;
use std::sync::Arc;

use super::recs::{BuildRawHasher, Key};

/// A document's id as the picture knows it.
pub type IdKey = Key;

// A document's entry in the sorted list: 48 bytes, as README and BENCHMARKS say.
const _: () = assert!(std::mem::size_of::<(IdKey, Known)>() == 48);

/// One document as the mirror last left it: 32 bytes, kept for every
/// document of every mirrored collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// The content hash (`_mirror.hash`, 32 hex digits) as a number; see [`Known::new`].
    pub hash: u128,
    pub source: Arc<str>,
}

impl Known {
    /// A hash the target holds in any other form than the mirror's 32
    /// lowercase hex digits (an app's or an operator's write): kept as this
    /// value, which [`Known::hash_text`] turns into a text no record's content
    /// hash ever equals, so the document is written again, as it would be
    /// with the text itself.
    const ODD: u128 = 0;

    pub fn new(hash: &str, source: Arc<str>) -> Known {
        let lower_hex = hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let hash = if lower_hex { u128::from_str_radix(hash, 16).unwrap_or(Known::ODD) } else { Known::ODD };
        Known { hash, source }
    }

    /// The content hash as the target holds it (as the mapping writes it).
    pub fn hash_text(&self) -> String {
        if self.hash == Known::ODD {
            return "?".to_string();
        }
        format!("{:032x}", self.hash)
    }
}

/// A random seed for 128-bit keys of texts (XXH3): the picture's id keys
/// (one seed per process) and first-keeps-it's (one per scan). Nobody can
/// pick a text whose key another text has.
#[derive(Debug, Clone, Copy)]
pub struct IdSeed(u64);

impl Default for IdSeed {
    fn default() -> Self {
        use std::hash::BuildHasher;
        IdSeed(std::collections::hash_map::RandomState::new().hash_one(0u64))
    }
}

impl IdSeed {
    pub fn key(self, id: &str) -> IdKey {
        Key::of(xxhash_rust::xxh3::xxh3_128_with_seed(id.as_bytes(), self.0))
    }
}

/// Changes kept beside the sorted list before they are folded in: at least
/// this many, and at least an eighth of the list.
const DELTA_MIN: usize = 1024;

/// The picture of one collection.
#[derive(Debug, Default)]
pub struct Coll {
    /// Built in bulk: sorted by key, one entry per key.
    base: Vec<(IdKey, Known)>,
    /// Changes since (`None`: the document was deleted).
    delta: HashMap<IdKey, Option<Known>, BuildRawHasher>,
    /// Documents known (the list's, with the changes applied).
    len: usize,
}

impl Coll {
    /// A collection's picture from what a full scan learnt, in bulk: one
    /// entry per key (of two with one key, either may stay). Sorted in place.
    pub fn build(mut entries: Vec<(IdKey, Known)>) -> Coll {
        entries.sort_unstable_by_key(|(k, _)| *k);
        entries.dedup_by_key(|(k, _)| *k);
        entries.shrink_to_fit();
        Coll { len: entries.len(), base: entries, delta: HashMap::default() }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: IdKey) -> Option<&Known> {
        match self.delta.get(&key) {
            Some(changed) => changed.as_ref(),
            None => self.in_base(key),
        }
    }

    fn in_base(&self, key: IdKey) -> Option<&Known> {
        self.base.binary_search_by(|(k, _)| k.cmp(&key)).ok().and_then(|i| self.base.get(i)).map(|(_, k)| k)
    }

    /// The document now holds this.
    pub fn set(&mut self, key: IdKey, known: Known) {
        if self.get(key).is_none() {
            self.len += 1;
        }
        self.change(key, Some(known));
    }

    /// The document is gone.
    pub fn remove(&mut self, key: IdKey) {
        if self.get(key).is_some() {
            self.len -= 1;
        }
        if self.in_base(key).is_some() {
            self.change(key, None);
        } else {
            self.delta.remove(&key);
        }
    }

    fn change(&mut self, key: IdKey, to: Option<Known>) {
        self.delta.insert(key, to);
        if self.delta.len() >= DELTA_MIN.max(self.base.len() / 8) {
            self.fold();
        }
    }

    /// The changes folded into the sorted list (one pass over both).
    fn fold(&mut self) {
        let mut changes: Vec<(IdKey, Option<Known>)> = self.delta.drain().collect();
        changes.sort_unstable_by_key(|(k, _)| *k);
        let old = std::mem::take(&mut self.base);
        let mut base = Vec::with_capacity(self.len);
        let mut changes = changes.into_iter().peekable();
        for (key, known) in old {
            while let Some((k, to)) = changes.next_if(|(k, _)| *k < key) {
                base.extend(to.map(|to| (k, to)));
            }
            match changes.next_if(|(k, _)| *k == key) {
                Some((_, to)) => base.extend(to.map(|to| (key, to))),
                None => base.push((key, known)),
            }
        }
        base.extend(changes.filter_map(|(k, to)| Some((k, to?))));
        self.base = base;
    }

    /// Every document known, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IdKey, &Known)> {
        let unchanged = self.base.iter().filter(|(k, _)| !self.delta.contains_key(k)).map(|(k, v)| (*k, v));
        unchanged.chain(self.delta.iter().filter_map(|(k, v)| Some((*k, v.as_ref()?))))
    }
}

/// Per collection, its picture (see the module docs).
#[derive(Debug, Default)]
pub struct Picture {
    colls: HashMap<String, Coll>,
}

impl Picture {
    pub fn get(&self, collection: &str) -> Option<&Coll> {
        self.colls.get(collection)
    }

    pub fn get_mut(&mut self, collection: &str) -> Option<&mut Coll> {
        self.colls.get_mut(collection)
    }

    pub fn insert(&mut self, collection: &str, coll: Coll) {
        self.colls.insert(collection.to_string(), coll);
    }

    pub fn remove(&mut self, collection: &str) {
        self.colls.remove(collection);
    }

    pub fn clear(&mut self) {
        self.colls.clear();
    }

    pub fn contains(&self, collection: &str) -> bool {
        self.colls.contains_key(collection)
    }

    pub fn is_empty(&self) -> bool {
        self.colls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn known(hash: u128, source: &str) -> Known {
        Known { hash, source: Arc::from(source) }
    }

    #[test]
    fn ids_are_keyed_under_a_seed_of_each_processs_own() {
        let (a, b) = (IdSeed::default(), IdSeed::default());
        assert_eq!(a.key("u1"), a.key("u1"));
        assert_ne!(a.key("u1"), a.key("u2"));
        assert_ne!(a.key("u1"), b.key("u1"), "two pictures, two seeds");
    }

    #[test]
    fn a_built_picture_holds_each_key_once() {
        let seed = IdSeed::default();
        let coll = Coll::build(vec![
            (seed.key("u2"), known(2, "a")),
            (seed.key("u1"), known(1, "a")),
            (seed.key("u1"), known(1, "a")),
        ]);
        assert_eq!(coll.len(), 2);
        assert_eq!(coll.iter().count(), 2);
        assert_eq!(coll.get(seed.key("u1")).map(|k| (k.hash, &*k.source)), Some((1, "a")));
        assert_eq!(coll.get(seed.key("u3")), None);
    }

    proptest! {
        /// Sets and removes, across the folds of the changes into the list,
        /// answer as a plain table of the same changes would.
        #[test]
        fn changes_answer_as_a_plain_table_across_folds(
            start in proptest::collection::vec((0u16..3000, 0u128..5), 0..400),
            ops in proptest::collection::vec((0u16..3000, proptest::option::of(0u128..5)), 0..3000),
        ) {
            let seed = IdSeed::default();
            let id = |n: u16| format!("id{n}");
            let mut model: HashMap<String, u128> = HashMap::new();
            for (n, h) in &start {
                model.entry(id(*n)).or_insert(*h);
            }
            // (A full scan gives each key once.)
            let mut coll = Coll::build(model.iter().map(|(i, h)| (seed.key(i), known(*h, "f"))).collect());
            for (n, op) in ops {
                match op {
                    Some(h) => {
                        coll.set(seed.key(&id(n)), known(h, "f"));
                        model.insert(id(n), h);
                    }
                    None => {
                        coll.remove(seed.key(&id(n)));
                        model.remove(&id(n));
                    }
                }
                prop_assert_eq!(coll.len(), model.len());
            }
            for n in 0..3000u16 {
                prop_assert_eq!(coll.get(seed.key(&id(n))).map(|k| k.hash), model.get(&id(n)).copied());
            }
            let mut listed: Vec<(IdKey, u128)> = coll.iter().map(|(k, v)| (k, v.hash)).collect();
            listed.sort_by_key(|(k, _)| *k);
            let mut expected: Vec<(IdKey, u128)> = model.iter().map(|(i, h)| (seed.key(i), *h)).collect();
            expected.sort_by_key(|(k, _)| *k);
            prop_assert_eq!(listed, expected);
        }
    }
}
