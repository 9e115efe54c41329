//! The first-keeps-it rule's bookkeeping for a scan: which record first
//! used each id and unique value ([`Firsts`]), and the keys a changed file's
//! memo hits are checked against ([`ClashKeys`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::picture::IdSeed;
use super::recs::{BuildRawHasher, Key};
use crate::mapping::Reject;

/// Where a record sits: file (index into [`Firsts::rels`]) and position
/// ([`Loc::NONE`] for a file that is one record). Eight bytes: a scan of a
/// million records keeps one per id and per unique value.
#[derive(Debug, Clone, Copy)]
pub(super) struct Loc {
    file: u32,
    position: u32,
}

impl Loc {
    const NONE: u32 = u32::MAX;

    fn new(file: usize, position: Option<usize>) -> Loc {
        // A file of 2^32 records would be far over any read limit (1 GiB by default).
        let file = u32::try_from(file).unwrap_or(u32::MAX);
        let position = position.map_or(Loc::NONE, |p| u32::try_from(p).unwrap_or(Loc::NONE - 1));
        Loc { file, position }
    }
}

/// Where each key was first used, by the key's [`Firsts::key`] hash: 24
/// bytes an entry, and no copy of the key.
type FirstUse = HashMap<Key, Loc, BuildRawHasher>;

/// Which record first used each id and each unique value: the first keeps it.
/// Keys are kept as 128-bit hashes (XXH3, seeded at random per scan, so no
/// one can pick a value that shares another's), as the memo keeps texts:
/// the ids and emails themselves live in the records and the memo, once.
/// Handed on in [`Scanned::firsts`] once the scan is in: its ids are the
/// ids in the files (for the deletes) and where each came from (for the
/// picture), so the run keeps no second table of a million ids.
#[derive(Default)]
pub struct Firsts {
    seed: IdSeed,
    rels: Vec<Arc<str>>,
    by_id: FirstUse,
    /// Per unique field (a handful: compared by pointer, then by name), by
    /// value; only while the scan runs. One table per field keeps each
    /// entry to a value and a location (a million emails: 24 bytes each).
    by_unique: Vec<(Arc<str>, FirstUse)>,
}

impl std::fmt::Debug for Firsts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firsts").field("files", &self.rels.len()).field("ids", &self.by_id.len()).finish()
    }
}

impl Firsts {
    fn key(&self, text: &str) -> Key {
        self.seed.key(text)
    }

    /// The index of a file (the last one again while its records come in
    /// blocks); its name is the scan's own, shared.
    pub(super) fn file(&mut self, rel: &Arc<str>) -> usize {
        if self.rels.last().is_some_and(|r| r == rel) {
            return self.rels.len() - 1;
        }
        self.rels.push(rel.clone());
        self.rels.len() - 1
    }

    fn locate(&self, loc: Loc) -> String {
        let rel = self.rels.get(usize::try_from(loc.file).unwrap_or(usize::MAX)).map_or("?", |r| &**r);
        match loc.position {
            Loc::NONE => rel.to_string(),
            p => format!("{rel}[{p}]"),
        }
    }

    pub(super) fn clash<'a>(
        &self,
        id: &str,
        mut uniques: impl Iterator<Item = (&'a Arc<str>, &'a str)>,
    ) -> Option<Reject> {
        if let Some(first) = self.by_id.get(&self.key(id)) {
            return Some(Reject::DuplicateId { id: id.to_string(), first: self.locate(*first) });
        }
        uniques.find_map(|(field, v)| {
            let first = self.unique(field)?.get(&self.key(v))?;
            Some(Reject::DuplicateEmail { email: v.to_string(), first: self.locate(*first) })
        })
    }

    fn unique(&self, field: &Arc<str>) -> Option<&FirstUse> {
        self.by_unique.get(self.field_at(field)?).map(|(_, m)| m)
    }

    /// Where a field's table is (compared by pointer first: the scan shares one name per field).
    fn field_at(&self, field: &Arc<str>) -> Option<usize> {
        self.by_unique.iter().position(|(f, _)| Arc::ptr_eq(f, field) || f == field)
    }

    pub(super) fn claim<'a>(
        &mut self,
        id: &str,
        uniques: impl Iterator<Item = (&'a Arc<str>, &'a str)>,
        file: usize,
        position: Option<usize>,
    ) {
        let loc = Loc::new(file, position);
        self.by_id.insert(self.key(id), loc);
        for (field, v) in uniques {
            let at = self.field_at(field).unwrap_or_else(|| {
                self.by_unique.push((field.clone(), HashMap::default()));
                self.by_unique.len() - 1
            });
            let key = self.key(v);
            if let Some((_, m)) = self.by_unique.get_mut(at) {
                m.insert(key, loc);
            }
        }
    }

    /// Room for `n` more records, each with these unique fields: a file
    /// counted before it is read (a million users) sizes the tables once,
    /// instead of growing them, old and new table side by side, as it is read.
    pub(super) fn reserve(&mut self, n: usize, fields: &[Arc<str>]) {
        self.by_id.reserve(n);
        for field in fields {
            match self.field_at(field) {
                Some(at) => {
                    if let Some((_, m)) = self.by_unique.get_mut(at) {
                        m.reserve(n);
                    }
                }
                None => self
                    .by_unique
                    .push((field.clone(), FirstUse::with_capacity_and_hasher(n, BuildRawHasher::default()))),
            }
        }
    }

    /// The scan is over: only the ids are needed from here on.
    pub(super) fn done(&mut self) {
        self.by_unique = Vec::new();
    }

    /// A record of the scanned files kept this id (mapped, or unchanged and
    /// checked). Records that lost it to an earlier one are not counted.
    pub fn has(&self, id: &str) -> bool {
        self.by_id.contains_key(&self.key(id))
    }

    /// The file the record that kept this id came from (its shared name).
    pub fn source_of(&self, id: &str) -> Option<&Arc<str>> {
        let loc = self.by_id.get(&self.key(id))?;
        self.rels.get(usize::try_from(loc.file).ok()?)
    }
}

/// The keys [`clash_keys`] finds, asked once per memo hit (a million times
/// for a million-user file). Usually a handful (one changed record's id and
/// email): compared one by one, which costs less than hashing the question;
/// a set once there are many.
#[derive(Default)]
pub(super) struct ClashKeys {
    few: Vec<Arc<str>>,
    many: HashSet<Arc<str>, foldhash::fast::RandomState>,
}

impl ClashKeys {
    const FEW: usize = 16;

    pub(super) fn insert(&mut self, key: Arc<str>) {
        if !self.many.is_empty() {
            self.many.insert(key);
        } else if !self.few.contains(&key) {
            self.few.push(key);
            if self.few.len() > Self::FEW {
                self.many.extend(self.few.drain(..));
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.few.is_empty() && self.many.is_empty()
    }

    /// Whether a memo record's id or one of its unique values is a key.
    pub(super) fn touches(&self, rec: super::memo::Rec<'_>) -> bool {
        self.contains(rec.id()) || rec.uniques().any(|(_, v)| self.contains(v))
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        if self.many.is_empty() {
            self.few.iter().any(|k| &**k == key)
        } else {
            self.many.contains(key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (field, value) pairs as a record hands them over.
    fn u<'a>(pairs: &'a [(Arc<str>, &'a str)]) -> impl Iterator<Item = (&'a Arc<str>, &'a str)> {
        pairs.iter().map(|(f, v)| (f, *v))
    }

    #[test]
    fn a_unique_value_is_first_kept_per_field() {
        let mut firsts = Firsts::default();
        let file = firsts.file(&Arc::from("data/users.json"));
        let (email, backup): (Arc<str>, Arc<str>) = (Arc::from("email"), Arc::from("backupEmail"));
        firsts.claim("u1", u(&[(email.clone(), "a@x.io")]), file, Some(0));
        // The same value under another field is no clash; under the same
        // field (named by another copy of its name) it is.
        assert!(firsts.clash("u2", u(&[(backup.clone(), "a@x.io")])).is_none());
        let again = [(Arc::from("email"), "a@x.io")];
        assert!(matches!(
            firsts.clash("u2", u(&again)),
            Some(Reject::DuplicateEmail { email, first }) if email == "a@x.io" && first == "data/users.json[0]"
        ));
        assert!(matches!(firsts.clash("u1", u(&[])), Some(Reject::DuplicateId { id, .. }) if id == "u1"));
        // Only the same text is the same key.
        assert!(firsts.clash("u1 ", u(&[(email, "a@x.io ")])).is_none() && !firsts.has("U1"));
        firsts.claim("u2", u(&[(backup.clone(), "a@x.io")]), file, Some(1));
        assert!(firsts.clash("u3", u(&[(backup, "a@x.io")])).is_some());
        firsts.done();
        assert!(firsts.clash("u3", u(&again)).is_none() && firsts.has("u2"));
        assert_eq!(firsts.source_of("u2").map(|r| &**r), Some("data/users.json"));
        assert!(firsts.source_of("u9").is_none());
    }

    #[test]
    fn tables_sized_for_a_counted_file_do_not_grow_as_it_is_read() {
        let mut firsts = Firsts::default();
        let email: Arc<str> = Arc::from("email");
        firsts.reserve(5000, std::slice::from_ref(&email));
        let capacity = (firsts.by_id.capacity(), firsts.by_unique[0].1.capacity());
        assert!(capacity.0 >= 5000 && capacity.1 >= 5000, "{capacity:?}");
        let file = firsts.file(&Arc::from("data/users.json"));
        for i in 0..5000 {
            let (id, value) = (format!("u{i}"), format!("u{i}@x.io"));
            let pairs = [(email.clone(), value.as_str())];
            assert!(firsts.clash(&id, u(&pairs)).is_none());
            firsts.claim(&id, u(&pairs), file, Some(i));
        }
        assert_eq!((firsts.by_id.capacity(), firsts.by_unique[0].1.capacity()), capacity);
        assert_eq!(firsts.by_unique.len(), 1, "the field's table is the one reserved");
    }

    #[test]
    fn keys_are_hashed_under_a_seed_of_each_scans_own() {
        let (a, b) = (Firsts::default(), Firsts::default());
        assert_eq!(a.key("u1"), a.key("u1"));
        assert_ne!(a.key("u1"), a.key("u2"));
        assert_ne!(a.key("u1"), b.key("u1"), "two scans, two seeds");
        // A key and its location: 24 bytes a table entry.
        assert_eq!(std::mem::size_of::<(Key, Loc)>(), 24);
    }

    #[test]
    fn clash_keys_answer_alike_when_few_and_when_many() {
        let mut keys = ClashKeys::default();
        for i in 0..40 {
            keys.insert(Arc::from(format!("k{i}").as_str()));
            keys.insert(Arc::from(format!("k{i}").as_str()));
            for j in 0..=i {
                assert!(keys.contains(&format!("k{j}")), "k{j} after {i}");
            }
            assert!(!keys.contains(&format!("k{}", i + 1)));
            assert!(!keys.contains(""));
        }
        assert!(!keys.many.is_empty() && keys.few.is_empty());
    }
}
