//! A file's memo entries ([`Recs`]): a list for the few of most files, a
//! table keyed by the raw hash's halves for the large ones.

use std::collections::HashMap;

/// A 128-bit hash of a record's (or file's) raw text: XXH3, fast enough to
/// run over a 30 MB file on every change, wide enough that two different
/// texts sharing one is not a practical concern.
pub type RawHash = u128;

/// Entries kept in a list at most (found by comparing each hash).
const FEW: usize = 8;

/// Changes a sealed list takes in place (each moves the entries after it:
/// a few milliseconds at a million) before it becomes a table.
const EDITS: u16 = 32;

/// A file's memo entries, by raw-text hash. Most files hold one record (a
/// job's status file): a handful are kept in a list sized to them (one entry
/// is 32 bytes, where the smallest hash table is 160). A file mapped or
/// loaded whole is built as a list sorted by hash once [`Recs::seal`]ed
/// (24 bytes an entry, found from where the hash's share says); a table
/// (about twice that: its size is a power of two) only once such a list has
/// been changed more than [`EDITS`] times (watch, after the file changed). The hash is kept as two 64-bit halves ([`Key`]):
/// an entry is then 24 bytes, not 32 (a 128-bit number is aligned to 16).
#[derive(Debug)]
pub enum Recs<V> {
    Few(Vec<(Key, V)>),
    /// Built in bulk: in the order given until sealed, then sorted by hash
    /// (and changed in place up to [`EDITS`] times: `edits`).
    Sorted {
        list: Vec<(Key, V)>,
        sealed: bool,
        edits: u16,
    },
    Many(HashMap<Key, V, BuildRawHasher>),
}

/// A [`RawHash`] as its low and high 64 bits (ordered as the hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(u64, u64);

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.1, self.0).cmp(&(other.1, other.0))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Key {
    pub fn of(h: RawHash) -> Key {
        let low = u64::try_from(h & u128::from(u64::MAX)).unwrap_or_default();
        let high = u64::try_from(h >> 64).unwrap_or_default();
        Key(low, high)
    }

    pub fn hash(self) -> RawHash {
        u128::from(self.1) << 64 | u128::from(self.0)
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The low half: raw hashes are uniformly random already (see [`RawHasher`]).
        state.write_u64(self.0);
    }
}

impl<V> Default for Recs<V> {
    fn default() -> Self {
        Recs::Few(Vec::new())
    }
}

impl<V> Recs<V> {
    /// Room for `n` entries: a list, or a list built in bulk (see [`Recs::seal`]).
    pub fn with_capacity(n: usize) -> Recs<V> {
        if n <= FEW {
            Recs::Few(Vec::with_capacity(n))
        } else {
            Recs::Sorted { list: Vec::with_capacity(n), sealed: false, edits: 0 }
        }
    }

    /// Entries to come in bulk, added as they come until [`Recs::seal`].
    pub fn bulk() -> Recs<V> {
        Recs::Sorted { list: Vec::new(), sealed: false, edits: 0 }
    }

    /// Being built in bulk: entries are added without looking for the same hash.
    pub fn is_bulk(&self) -> bool {
        matches!(self, Recs::Sorted { sealed: false, .. })
    }

    /// One entry.
    pub fn one(h: RawHash, rec: V) -> Recs<V> {
        Recs::Few(vec![(Key::of(h), rec)])
    }

    pub fn len(&self) -> usize {
        match self {
            Recs::Few(v) | Recs::Sorted { list: v, .. } => v.len(),
            Recs::Many(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        *self = Recs::default();
    }

    /// The bulk is in: sort it by hash (of entries given twice, the last
    /// stays) and size it to its entries. A few go back to a plain list.
    pub fn seal(&mut self) {
        // (A list sealed already keeps what room its changes in place have.)
        let Recs::Sorted { list, sealed: sealed @ false, .. } = self else { return };
        if !list.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable, after a reversal: of equal hashes the last given comes first and stays.
            list.reverse();
            list.sort_by_key(|(k, _)| *k);
            list.dedup_by(|a, b| a.0 == b.0);
        }
        *sealed = true;
        if list.len() <= FEW {
            *self = Recs::Few(std::mem::take(list));
        }
        if let Recs::Few(list) | Recs::Sorted { list, .. } = self {
            list.shrink_to_fit();
        }
    }

    pub fn get(&self, h: &RawHash) -> Option<&V> {
        let k = Key::of(*h);
        match self {
            Recs::Few(v) => v.iter().find(|(x, _)| *x == k).map(|(_, r)| r),
            Recs::Sorted { list, sealed: true, .. } => find(list, k).ok().and_then(|i| list.get(i)).map(|(_, r)| r),
            Recs::Sorted { list, sealed: false, .. } => list.iter().rev().find(|(x, _)| *x == k).map(|(_, r)| r),
            Recs::Many(m) => m.get(&k),
        }
    }

    /// A sealed list that can take one more change in place, with room
    /// made for the changes left (a sealed list is sized to its entries, and
    /// a list that grows doubles).
    fn in_place(&mut self) -> Option<&mut Vec<(Key, V)>> {
        match self {
            Recs::Sorted { list, sealed: true, edits } if *edits < EDITS => {
                if list.capacity() == list.len() {
                    list.reserve_exact(usize::from(EDITS - *edits));
                }
                *edits += 1;
                Some(list)
            }
            _ => None,
        }
    }

    /// A sealed list that is changed past [`EDITS`] times becomes a table (or a plain list, when short).
    fn loosen(&mut self) {
        if let Recs::Sorted { list, sealed: true, .. } = self {
            let list = std::mem::take(list);
            *self = if list.len() <= FEW {
                Recs::Few(list)
            } else {
                let mut m = HashMap::with_capacity_and_hasher(list.len(), BuildRawHasher::default());
                m.extend(list);
                Recs::Many(m)
            };
        }
    }

    /// Add or replace an entry (in bulk: add); a list that would pass [`FEW`] becomes a table.
    pub fn insert(&mut self, h: RawHash, rec: V) {
        let k = Key::of(h);
        if let Some(list) = self.in_place() {
            match find(list, k) {
                Ok(i) => {
                    if let Some(e) = list.get_mut(i) {
                        e.1 = rec;
                    }
                }
                Err(i) => list.insert(i, (k, rec)),
            }
            return;
        }
        self.loosen();
        if let Recs::Few(v) = self {
            if let Some(slot) = v.iter_mut().find(|(x, _)| *x == k) {
                slot.1 = rec;
                return;
            }
        }
        // A list grows one entry at a time: a list of one is 32 bytes, not 96.
        self.reserve(1);
        match self {
            Recs::Few(v) | Recs::Sorted { list: v, .. } => v.push((k, rec)),
            Recs::Many(m) => {
                m.insert(k, rec);
            }
        }
    }

    pub fn remove(&mut self, h: &RawHash) -> Option<V> {
        let k = Key::of(*h);
        if let Recs::Sorted { list, sealed: false, .. } = self {
            // (Not while a bulk comes in: sealed first.)
            if list.iter().any(|(x, _)| *x == k) {
                self.seal();
            }
        }
        if let Some(list) = self.in_place() {
            return find(list, k).ok().map(|i| list.remove(i).1);
        }
        self.loosen();
        match self {
            Recs::Few(v) => {
                let at = v.iter().position(|(x, _)| *x == k)?;
                Some(v.swap_remove(at).1)
            }
            Recs::Sorted { .. } => None,
            Recs::Many(m) => m.remove(&k),
        }
    }

    /// Room for `n` more (a table once a list would pass [`FEW`]; a bulk
    /// grows by a quarter, not double: a million entries are 24 MB).
    pub fn reserve(&mut self, n: usize) {
        if let Recs::Sorted { sealed: true, edits, .. } = self {
            if usize::from(*edits) + n <= usize::from(EDITS) {
                return; // (changed in place)
            }
        }
        self.loosen();
        match self {
            Recs::Few(v) if v.len() + n <= FEW => v.reserve_exact(n),
            Recs::Few(v) => {
                let mut m = HashMap::with_capacity_and_hasher(v.len() + n, BuildRawHasher::default());
                m.extend(v.drain(..));
                *self = Recs::Many(m);
            }
            Recs::Sorted { list, .. } => {
                if list.capacity() - list.len() < n {
                    list.reserve_exact((list.len() / 4).max(n));
                }
            }
            Recs::Many(m) => m.reserve(n),
        }
    }

    /// Keep only the entries `keep` says yes to (a sealed list stays sealed).
    pub fn retain(&mut self, mut keep: impl FnMut(RawHash, &V) -> bool) {
        match self {
            Recs::Few(v) | Recs::Sorted { list: v, .. } => v.retain(|(k, r)| keep(k.hash(), r)),
            Recs::Many(m) => m.retain(|k, r| keep(k.hash(), r)),
        }
    }

    pub fn extend(&mut self, other: Recs<V>) {
        self.reserve(other.len());
        for (h, r) in other {
            self.insert(h, r);
        }
    }

    /// The entries, with their hashes (made whole again from their halves).
    pub fn iter(&self) -> impl Iterator<Item = (RawHash, &V)> {
        let (few, many) = match self {
            Recs::Few(v) | Recs::Sorted { list: v, .. } => (Some(v.iter().map(|(k, r)| (k.hash(), r))), None),
            Recs::Many(m) => (None, Some(m.iter().map(|(k, r)| (k.hash(), r)))),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    pub fn keys(&self) -> impl Iterator<Item = RawHash> + '_ {
        self.iter().map(|(h, _)| h)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, r)| r)
    }
}

/// Where `k` is in a list sorted by hash (`Err`: where it would go). Raw
/// hashes are spread evenly, so the list's share below `k` is about `k`'s
/// share of all hashes: the search starts there and widens from it (a few
/// neighbouring entries) instead of halving the whole list (twenty scattered
/// reads at a million, for each of a million lookups when a file changes).
fn find<V>(list: &[(Key, V)], k: Key) -> Result<usize, usize> {
    let n = list.len();
    let wide = u128::from(u64::try_from(n).unwrap_or(u64::MAX));
    let guess = usize::try_from((u128::from(k.1) * wide) >> 64).unwrap_or(n).min(n.saturating_sub(1));
    let below = |i: usize| list.get(i).is_some_and(|(x, _)| *x < k);
    // Widen from the guess until `k` is bracketed, then halve within.
    let (mut lo, mut hi) = (guess, guess + 1);
    let mut step = 1;
    while lo > 0 && !below(lo) {
        lo = lo.saturating_sub(step);
        step *= 2;
    }
    step = 1;
    while hi < n && below(hi) {
        hi = (hi + step).min(n);
        step *= 2;
    }
    // (`hi` is the first entry not below `k`, or the end: it may be `k` itself.)
    let (lo, hi) = (lo.min(n), (hi + 1).min(n));
    match list.get(lo..hi).map(|w| w.binary_search_by(|(x, _)| x.cmp(&k))) {
        Some(Ok(i)) => Ok(lo + i),
        Some(Err(i)) => Err(lo + i),
        None => list.binary_search_by(|(x, _)| x.cmp(&k)),
    }
}

/// An entry with its hash made whole again.
fn whole<V>((k, v): (Key, V)) -> (RawHash, V) {
    (k.hash(), v)
}

type Whole<I, V> = std::iter::Map<I, fn((Key, V)) -> (RawHash, V)>;

impl<V> IntoIterator for Recs<V> {
    type Item = (RawHash, V);
    type IntoIter = std::iter::Chain<
        std::iter::Flatten<std::option::IntoIter<Whole<std::vec::IntoIter<(Key, V)>, V>>>,
        std::iter::Flatten<std::option::IntoIter<Whole<std::collections::hash_map::IntoIter<Key, V>, V>>>,
    >;
    fn into_iter(self) -> Self::IntoIter {
        let (few, many) = match self {
            Recs::Few(v) | Recs::Sorted { list: v, .. } => {
                (Some(v.into_iter().map(whole as fn((Key, V)) -> (RawHash, V))), None)
            }
            Recs::Many(m) => (None, Some(m.into_iter().map(whole as fn((Key, V)) -> (RawHash, V)))),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
impl<V> std::ops::Index<&RawHash> for Recs<V> {
    type Output = V;
    /// Panics where the entry is missing, as a map's index does.
    fn index(&self, h: &RawHash) -> &V {
        match self.get(h) {
            Some(r) => r,
            None => panic!("no memo entry for {h:032x}"),
        }
    }
}

/// Raw-text hashes are already uniformly random: a hash map keyed by them
/// needs no second hash (SipHash over 100,000 keys per change is measurable).
#[derive(Default)]
pub struct RawHasher(u64);

impl std::hash::Hasher for RawHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than [`Key`]; fold them in (FNV-1a).
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // The low half of a raw hash ([`Key`]): the truncation is the point.
        self.0 ^= n;
    }
}

pub type BuildRawHasher = std::hash::BuildHasherDefault<RawHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_entries_are_the_same_kept_in_a_list_or_in_a_table() {
        let rec = |id: &str| id.to_string();
        let mut recs: Recs<String> = Recs::default();
        let mut model: HashMap<RawHash, String> = HashMap::new();
        let mut table = false;
        // Past the list's size and back below it, replacing, removing and retaining on the way.
        for i in 0..(FEW as u128 * 3) {
            recs.insert(i * 31, rec(&format!("r{i}")));
            model.insert(i * 31, format!("r{i}"));
            table |= model.len() > FEW;
            if i % 5 == 0 {
                recs.insert(i * 31, rec(&format!("again{i}")));
                model.insert(i * 31, format!("again{i}"));
            }
            if i % 7 == 3 {
                assert_eq!(recs.remove(&((i - 1) * 31)).map(|r| r.to_string()), model.remove(&((i - 1) * 31)));
            }
            assert_eq!(recs.len(), model.len());
            assert_eq!(matches!(recs, Recs::Many(_)), table, "a list up to {} entries, then a table", FEW);
        }
        let got = |recs: &Recs<String>| -> HashMap<RawHash, String> {
            recs.iter().map(|(h, r)| (h, r.to_string())).collect()
        };
        assert_eq!(got(&recs), model);
        assert!(recs.get(&1).is_none() && recs.remove(&1).is_none());
        recs.retain(|h, _| h % 2 == 0);
        model.retain(|h, _| h % 2 == 0);
        assert_eq!(got(&recs), model);
        // A list of one is sized to one entry (the point of the list).
        let one = Recs::one(7, rec("j1"));
        assert!(matches!(&one, Recs::Few(v) if v.capacity() == 1));
        let mut few: Recs<String> = Recs::default();
        few.insert(1, rec("a"));
        assert!(matches!(&few, Recs::Few(v) if v.capacity() == 1), "grown one entry at a time");
        few.extend(recs);
        let mut all = model.clone();
        all.insert(1, "a".into());
        assert_eq!(got(&few), all);
        let back: HashMap<RawHash, String> = few.into_iter().map(|(h, r)| (h, r.to_string())).collect();
        assert_eq!(back, all);
    }

    #[test]
    fn a_bulk_is_sorted_once_sealed_and_found_as_a_table_finds_it() {
        let mut recs: Recs<String> = Recs::bulk();
        let mut model: HashMap<RawHash, String> = HashMap::new();
        // Hashes in no order, high halves and low halves mixed, one given twice.
        let hashes: Vec<RawHash> =
            (1..200u128).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) ^ (i << 64)).collect();
        for (i, h) in hashes.iter().enumerate() {
            recs.insert(*h, format!("r{i}"));
            model.insert(*h, format!("r{i}"));
        }
        recs.insert(hashes[3], "last".into());
        model.insert(hashes[3], "last".into());
        assert!(recs.is_bulk());
        assert_eq!(recs.get(&hashes[3]).map(String::as_str), Some("last"), "found before it is sealed too");
        recs.seal();
        assert!(
            matches!(&recs, Recs::Sorted { list, sealed: true, .. } if list.len() == model.len() && list.capacity() == list.len())
        );
        let keys: Vec<RawHash> = recs.keys().collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted by hash");
        for (h, r) in &model {
            assert_eq!(recs.get(h), Some(r));
        }
        assert!(recs.get(&0).is_none() && recs.get(&u128::MAX).is_none());
        // Kept to some: still sealed, still found.
        recs.retain(|h, _| h % 3 != 0);
        model.retain(|h, _| h % 3 != 0);
        assert!(matches!(&recs, Recs::Sorted { sealed: true, .. }));
        assert!(model.iter().all(|(h, r)| recs.get(h) == Some(r)));
        // Changed a few times: in place, still sorted, still found; past
        // EDITS changes, a table with the same entries.
        let mut changes = 0;
        let Recs::Sorted { list, .. } = &recs else { panic!("sealed") };
        let room = list.capacity().max(list.len() + usize::from(EDITS));
        for (i, gone) in model.keys().copied().take(usize::from(EDITS) / 2).collect::<Vec<_>>().into_iter().enumerate()
        {
            assert_eq!(recs.remove(&gone), model.remove(&gone));
            let new = 5 + 1000 * u128::try_from(i).unwrap();
            recs.insert(new, format!("new{i}"));
            model.insert(new, format!("new{i}"));
            changes += 2;
            // (The memo seals each file after a reconcile: a sealed list keeps its room.)
            recs.seal();
            assert!(matches!(&recs, Recs::Sorted { sealed: true, .. }), "in place after {changes} changes");
            assert!(model.iter().all(|(h, r)| recs.get(h) == Some(r)), "after {changes} changes");
            let keys: Vec<RawHash> = recs.keys().collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "still sorted after {changes} changes");
        }
        assert!(
            matches!(&recs, Recs::Sorted { list, .. } if list.capacity() <= room),
            "room for the changes only, not a doubled list"
        );
        recs.insert(7, "one more".into());
        model.insert(7, "one more".into());
        assert!(matches!(&recs, Recs::Many(_)), "a table past {EDITS} changes");
        let got: HashMap<RawHash, String> = recs.into_iter().collect();
        assert_eq!(got, model);
        // A bulk of a few is a plain list once sealed.
        let mut few: Recs<String> = Recs::bulk();
        few.insert(9, "a".into());
        few.seal();
        assert!(matches!(&few, Recs::Few(v) if v.len() == 1));
    }

    #[test]
    fn a_search_from_the_hashs_share_finds_what_halving_finds() {
        // Even hashes, and lists bunched at one end (where the guess is far off).
        let mut x: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (n, bunched) in
            [(0, false), (1, false), (2, true), (50, false), (1000, false), (1000, true), (20_000, false)]
        {
            let mut list: Vec<(Key, u8)> =
                (0..n).map(|_| (Key::of(if bunched { next() >> 100 } else { next() }), 0)).collect();
            list.sort_by_key(|(k, _)| *k);
            list.dedup_by(|a, b| a.0 == b.0);
            let asks: Vec<Key> = list.iter().map(|(k, _)| *k).chain((0..200).map(|_| Key::of(next()))).collect();
            for k in asks.into_iter().chain([Key::of(0), Key::of(u128::MAX)]) {
                assert_eq!(find(&list, k), list.binary_search_by(|(x, _)| x.cmp(&k)), "{n} {bunched} {:#x}", k.hash());
            }
        }
    }

    #[test]
    fn a_hash_kept_as_two_halves_is_the_same_hash() {
        let rec = |id: &str| id.to_string();
        // Hashes that differ only in their high half, or only in their low half.
        let hashes = [0, 1, u128::MAX, 1 << 64, (1 << 64) | 1, u128::from(u64::MAX), u128::MAX - (1 << 64)];
        for (n, bulk) in [(hashes.len(), false), (FEW + hashes.len(), false), (FEW + hashes.len(), true)] {
            let mut recs: Recs<String> = if bulk { Recs::bulk() } else { Recs::default() };
            for (i, h) in hashes.iter().enumerate() {
                recs.insert(*h, rec(&format!("h{i}")));
            }
            for i in 0..n.saturating_sub(hashes.len()) {
                recs.insert(u128::try_from(i + 1).unwrap() << 70, rec("filler"));
            }
            recs.seal();
            for (i, h) in hashes.iter().enumerate() {
                assert_eq!(recs.get(h).map(|r| r.to_string()), Some(format!("h{i}")), "{h:#x} among {n}");
            }
            let mut keys: Vec<RawHash> = recs.keys().filter(|h| hashes.contains(h)).collect();
            keys.sort_unstable();
            let mut want = hashes.to_vec();
            want.sort_unstable();
            assert_eq!(keys, want);
        }
        // The point of the halves: an entry of 24 bytes, not 32.
        assert_eq!(std::mem::size_of::<(Key, std::sync::Arc<String>)>(), 24);
    }
}
