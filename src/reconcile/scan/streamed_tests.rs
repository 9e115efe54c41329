//! A changed file compared with watch's memo in a stream gives exactly what
//! the whole read gives: the same records mapped, rejected, marked and
//! vanished, whatever the edits (a record changed, one that takes an earlier
//! or later record's email, a text twice, records gone, added, moved, one
//! that does not map, one that is not an object).

use proptest::prelude::*;

use crate::reconcile::memo::{raw_hash, text_seed, FileMemo, Memory, Recs};
use crate::reconcile::scan::{scan_source, Scanned, Texts};

thread_local! {
    /// Files this thread compared with their memo in a stream.
    pub(super) static STREAMED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One more file compared in a stream on this thread.
pub(super) fn counted() {
    STREAMED.with(|n| n.set(n.get() + 1));
}

const HASH: &str = "$2b$10$J1JbpLNyErs2Vewf4LDN4u/Os0zWvTlg5el0sAu.ZUnk6lHagoW.u";

fn user(id: &str, email: &str, name: &str) -> String {
    format!(
        r#"{{"id":"{id}","email":"{email}","name":"{name}","password":"{HASH}","role":"user","createdAt":"2025-09-01T08:00:00.000Z","updatedAt":"2025-09-01T08:00:00.000Z"}}"#
    )
}

#[derive(Debug, Clone)]
enum Edit {
    Rename(usize),
    /// Record `a` takes record `b`'s email (earlier or later in the file).
    TakeEmail(usize, usize),
    /// Record `a`'s text once more, right after it.
    Twice(usize),
    Remove(usize),
    Add(usize),
    Swap(usize, usize),
    /// A record without a name (it does not map).
    Unmappable(usize),
    /// Not an object.
    NotObject(usize),
    /// Not JSON, in a way only a parser sees (the whole file is refused).
    Broken(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let i = 0..40usize;
    prop_oneof![
        i.clone().prop_map(Edit::Rename),
        (i.clone(), i.clone()).prop_map(|(a, b)| Edit::TakeEmail(a, b)),
        i.clone().prop_map(Edit::Twice),
        i.clone().prop_map(Edit::Remove),
        i.clone().prop_map(Edit::Add),
        (i.clone(), i.clone()).prop_map(|(a, b)| Edit::Swap(a, b)),
        i.clone().prop_map(Edit::Unmappable),
        i.clone().prop_map(Edit::NotObject),
        i.prop_map(Edit::Broken),
    ]
}

/// The file after the edits, as texts.
fn edited(before: &[(String, String, String)], edits: &[Edit]) -> Vec<String> {
    let mut recs: Vec<Option<(String, String, String)>> = before.iter().cloned().map(Some).collect();
    let mut raw: Vec<Option<String>> = vec![None; recs.len()];
    for (k, e) in edits.iter().enumerate() {
        let n = recs.len().max(1);
        match *e {
            Edit::Rename(a) => {
                if let Some(Some(r)) = recs.get_mut(a % n) {
                    r.2 = format!("renamed{k}");
                }
            }
            Edit::TakeEmail(a, b) => {
                let email = recs.get(b % n).cloned().flatten().map(|r| r.1);
                if let (Some(Some(r)), Some(email)) = (recs.get_mut(a % n), email) {
                    r.1 = email;
                }
            }
            Edit::Twice(a) if a % n < recs.len() => {
                recs.insert(a % n + 1, recs[a % n].clone());
                raw.insert(a % n + 1, raw[a % n].clone());
            }
            Edit::Remove(a) if a % n < recs.len() => {
                recs.remove(a % n);
                raw.remove(a % n);
            }
            Edit::Add(a) => {
                let at = a % (recs.len() + 1);
                recs.insert(at, Some((format!("n{k}"), format!("n{k}@x.io"), "New".into())));
                raw.insert(at, None);
            }
            Edit::Swap(a, b) if a % n < recs.len() && b % n < recs.len() => {
                recs.swap(a % n, b % n);
                raw.swap(a % n, b % n);
            }
            Edit::Unmappable(a) if a % n < recs.len() => {
                raw[a % n] = Some(format!(r#"{{"id":"x{k}","email":"x{k}@x.io"}}"#));
            }
            Edit::NotObject(a) if a % n < recs.len() => raw[a % n] = Some(k.to_string()),
            Edit::Broken(a) if a % n < recs.len() => raw[a % n] = Some(format!(r#"{{"id":"b{k}",}}"#)),
            _ => {}
        }
    }
    recs.into_iter()
        .zip(raw)
        .map(|(r, raw)| raw.unwrap_or_else(|| r.map(|(i, e, n)| user(&i, &e, &n)).unwrap_or_default()))
        .collect()
}

/// What a scan of the changed file says, in a form two scans can be compared by.
fn gist(s: &Scanned, memory: &Memory) -> String {
    let candidates: Vec<_> = s.candidates.iter().map(|c| (c.mapped.id.clone(), c.position, c.raw_hash)).collect();
    let rejects: Vec<_> = s.rejects.iter().map(|r| (r.id.clone(), r.position, r.reason.to_string())).collect();
    let mut vanished: Vec<_> = s.vanished.iter().map(|v| (v.rel.to_string(), v.id.to_string(), v.raw_hash)).collect();
    vanished.sort();
    let sorted = |set: &std::collections::HashSet<std::sync::Arc<str>>| {
        let mut v: Vec<String> = set.iter().map(|r| r.to_string()).collect();
        v.sort();
        v
    };
    let mut protected: Vec<_> = s.protected_ids.iter().cloned().collect();
    protected.sort();
    let memo = memory.memo.lock().unwrap();
    let mut marked: Vec<String> =
        memo.values().flat_map(|m| m.recs.marked(s.marked.pass, true).map(|(_, r)| r.id().to_string())).collect();
    marked.sort();
    let digests: Vec<_> = s.digests.iter().map(|(k, (d, _))| (k.to_string(), *d)).collect();
    format!(
        "candidates {candidates:?}\nrejects {rejects:?}\nrecords {} files {} marked {} {marked:?} unchanged {}\n\
         vanished {vanished:?}\ncovered {:?} read {:?} identical {:?} bad {:?} no deletes {:?}\nprotected {protected:?}\ndigests {digests:?}",
        s.records,
        s.files,
        s.marked.count,
        s.unchanged_len(),
        sorted(&s.memo_covered),
        sorted(&s.read_ok),
        sorted(&s.identical),
        sorted(&s.bad),
        sorted(&s.no_deletes),
    )
}

/// A scan of `after` with a memo of `before` (every record settled), read
/// whole or in a stream.
fn scan(before: &[(String, String, String)], after: &str, settled: bool, stream: bool) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let roots = crate::source::Roots { data: tmp.path().join("data"), artifacts: tmp.path().join("artifacts") };
    std::fs::create_dir_all(&roots.data).unwrap();
    std::fs::write(roots.data.join("users.json"), after).unwrap();
    let layout = crate::layout::Layout::builtin();
    let users = layout.sources.iter().position(|s| s.collection == "users").unwrap();
    let mut engine = crate::reconcile::Engine::new(layout, roots.clone(), crate::indexes::IndexSet::builtin());
    engine.limits.stream_from = if stream { 0 } else { u64::MAX };
    let seed = text_seed(&engine.fingerprints[users]);
    let mut recs = Recs::bulk();
    let mut texts = Vec::new();
    for (id, email, name) in before {
        let text = user(id, email, name);
        recs.insert(raw_hash(seed, &text), id, [("email", email.as_str())]);
        texts.push(text);
    }
    recs.seal();
    let before_bytes = format!("[{}]", texts.join(","));
    let digest = settled.then(|| xxhash_rust::xxh3::xxh3_128(before_bytes.as_bytes()));
    let memory = Memory::default();
    memory.memo.lock().unwrap().insert("data/users.json".into(), FileMemo { recs, digest, ..FileMemo::default() });
    let files = crate::source::discover(&engine.layout, &roots, users).unwrap();
    let streamed = STREAMED.with(std::cell::Cell::get);
    let scanned = scan_source(&engine, Some(&memory), Texts::None, users, Some(files), None).unwrap();
    // (A file found byte for byte as settled is not compared at all; one
    // that is not JSON is read whole.)
    let compared = scanned.identical.is_empty() && scanned.bad.is_empty();
    let delta = STREAMED.with(std::cell::Cell::get) - streamed;
    if compared || !stream {
        assert_eq!(delta, usize::from(stream && compared), "streamed: {stream}");
    }
    gist(&scanned, &memory)
}

fn before(n: usize) -> Vec<(String, String, String)> {
    (0..n).map(|i| (format!("u{i}"), format!("{i}@x.io"), "U".to_string())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_changed_file_compared_in_a_stream_gives_what_the_whole_read_gives(
        n in 0..30usize,
        edits in prop::collection::vec(edit(), 0..6),
        settled in any::<bool>(),
    ) {
        let before = before(n);
        let after = format!("[{}]", edited(&before, &edits).join(",\n"));
        let whole = scan(&before, &after, settled, false);
        let streamed = scan(&before, &after, settled, true);
        prop_assert_eq!(whole, streamed, "file: {}", after);
    }
}

/// The one-user change the stream is for: one record mapped, the rest left
/// marked in the memo, none of their texts read again.
#[test]
fn one_changed_record_of_many_is_the_only_one_mapped() {
    let before = before(500);
    let after = format!("[{}]", edited(&before, &[Edit::Rename(250)]).join(","));
    let g = scan(&before, &after, true, true);
    assert!(g.starts_with(r#"candidates [("u250", Some(250), "#), "{g}");
    assert!(g.contains("records 500 files 1 marked 499"), "{g}");
}
