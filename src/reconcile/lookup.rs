//! A changed file's records looked up in its memo all at once ([`Found`]):
//! the file's hashes sorted and walked beside the memo's sorted list in one
//! pass, instead of a search of the list for each (see [`super::hits`]).

use super::recs::{self, Key, RawHash};

/// Each text's entry in the memo (by the text's position in the file), and
/// whether its text occurs more than once in the file.
pub struct Found<'a, V> {
    pub slots: Vec<Option<&'a V>>,
    pub twice: Vec<bool>,
}

impl<V> Default for Found<'_, V> {
    fn default() -> Self {
        Found { slots: Vec::new(), twice: Vec::new() }
    }
}

impl<'a, V> Found<'a, V> {
    /// The entry of the `i`th text, if the memo has it.
    pub fn slot(&self, i: usize) -> Option<&'a V> {
        self.slots.get(i).copied().flatten()
    }

    /// Whether the `i`th text occurs more than once in the file.
    pub fn twice(&self, i: usize) -> bool {
        self.twice.get(i).copied().unwrap_or(false)
    }
}

/// Look every hash up: a sealed list is walked beside the hashes, sorted;
/// a table or a short list is asked hash by hash.
pub fn look_up_all<'a, V>(memo: &'a recs::Recs<V>, hashes: &[RawHash]) -> Found<'a, V> {
    let mut order: Vec<(Key, usize)> = hashes.iter().enumerate().map(|(i, h)| (Key::of(*h), i)).collect();
    order.sort_unstable_by_key(|(k, _)| *k);
    let mut twice = vec![false; hashes.len()];
    for w in order.windows(2) {
        if let [(a, i), (b, j)] = w {
            if a == b {
                set(&mut twice, *i);
                set(&mut twice, *j);
            }
        }
    }
    let mut slots: Vec<Option<&V>> = vec![None; hashes.len()];
    match memo {
        recs::Recs::Sorted { list, sealed: true, .. } => {
            let mut entries = list.iter().peekable();
            for (k, i) in &order {
                while entries.next_if(|(x, _)| x < k).is_some() {}
                if let Some((_, v)) = entries.peek().filter(|(x, _)| x == k) {
                    if let Some(s) = slots.get_mut(*i) {
                        *s = Some(v);
                    }
                }
            }
        }
        _ => {
            for (h, s) in hashes.iter().zip(slots.iter_mut()) {
                *s = memo.get(h);
            }
        }
    }
    Found { slots, twice }
}

fn set(flags: &mut [bool], i: usize) {
    if let Some(f) = flags.get_mut(i) {
        *f = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs_of(hashes: &[RawHash], sealed: bool) -> recs::Recs<usize> {
        let mut r = recs::Recs::bulk();
        for (i, h) in hashes.iter().enumerate() {
            r.insert(*h, i);
        }
        if sealed {
            r.seal();
        }
        r
    }

    #[test]
    fn all_at_once_finds_what_one_at_a_time_finds_and_the_texts_that_come_twice() {
        let memo: Vec<RawHash> =
            (0..500u128).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).collect();
        // Hits, misses, a text twice (a hit) and a miss twice.
        let mut file: Vec<RawHash> = memo.iter().step_by(3).copied().collect();
        file.extend([7, memo[3], 7, memo[300], 1 << 100]);
        file.insert(0, memo[3]);
        for sealed in [true, false] {
            let r = recs_of(&memo, sealed);
            let found = look_up_all(&r, &file);
            assert_eq!(found.slots.len(), file.len());
            for (i, h) in file.iter().enumerate() {
                assert_eq!(found.slot(i), r.get(h), "text {i} (sealed: {sealed})");
                let n = file.iter().filter(|x| *x == h).count();
                assert_eq!(found.twice(i), n > 1, "text {i} (sealed: {sealed})");
            }
            assert!(found.slot(1).is_some() && found.slot(file.len() - 1).is_none());
        }
        let none = recs_of(&[], true);
        let empty = look_up_all(&none, &file);
        assert!(empty.slots.iter().all(Option::is_none));
    }
}
