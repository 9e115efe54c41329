//! Tests of [`super`] (the packed memo records).

use super::*;
use std::collections::HashMap;

type Model = HashMap<RawHash, (String, Vec<(String, String)>)>;

fn got(recs: &Recs) -> Model {
    recs.iter()
        .map(|(h, r)| (h, (r.id().to_string(), r.uniques().map(|(f, v)| (f.to_string(), v.to_string())).collect())))
        .collect()
}

#[test]
fn a_files_records_read_back_as_they_were_given_through_replacements_removals_and_compaction() {
    let mut recs = Recs::default();
    let mut model = Model::new();
    for i in 0..3000u128 {
        let id = format!("user-{i}-{}", "é".repeat(usize::try_from(i % 5).unwrap()));
        let uniques: Vec<(String, String)> = match i % 3 {
            0 => vec![],
            1 => vec![("email".into(), format!("u{i}@x.io"))],
            _ => vec![("email".into(), format!("u{i}@x.io")), ("backup".into(), format!("b{i}@y.io"))],
        };
        assert!(recs.insert(i, &id, uniques.iter().map(|(f, v)| (f.as_str(), v.as_str()))));
        model.insert(i, (id, uniques));
        if i % 4 == 0 {
            // Replaced: the old bytes are dead.
            assert!(recs.insert(i, "again", [("email", "again@x.io")]));
            model.insert(i, ("again".into(), vec![("email".into(), "again@x.io".into())]));
        }
    }
    assert_eq!(got(&recs), model);
    // Most removed: the bytes are compacted, and what is left reads the same.
    let before = recs.bytes.len;
    for i in 0..2500u128 {
        assert_eq!(recs.remove(&i), model.remove(&i).is_some());
    }
    assert!(!recs.remove(&1) && recs.bytes.len < before / 2, "{} of {before}", recs.bytes.len);
    assert_eq!(got(&recs), model);
    recs.retain(|h, r| h % 2 == 0 || r.id().ends_with('é'));
    model.retain(|h, (id, _)| h % 2 == 0 || id.ends_with('é'));
    assert_eq!(got(&recs), model);
    // Moved to another hash, then added to another memo.
    recs.rekey(&2998, !2998);
    let moved = model.remove(&2998).unwrap();
    model.insert(!2998, moved);
    let mut other = Recs::default();
    other.insert(7, "seven", []);
    other.extend(recs);
    model.insert(7, ("seven".into(), vec![]));
    assert_eq!(got(&other), model);
    assert!(!other.is_short());
    // Encoded in hash order, as read.
    let packed = other.packed();
    let hashes: Vec<RawHash> = (0..packed.len()).filter_map(|i| packed.get(i).map(|(h, _)| h)).collect();
    let mut want: Vec<RawHash> = model.keys().copied().collect();
    want.sort_unstable();
    assert_eq!(hashes, want);
    let (h, r) = packed.get(0).unwrap();
    assert_eq!(r.id(), model[&h].0);
}

#[test]
fn a_bulk_reads_back_as_given_once_sealed_and_changes_after() {
    let mut recs = Recs::bulk();
    let mut model = Model::new();
    for i in (0..500u128).rev() {
        let h = i.wrapping_mul(0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c15);
        recs.insert(h, &format!("u{i}"), [("email", format!("u{i}@x.io").as_str())]);
        model.insert(h, (format!("u{i}"), vec![("email".into(), format!("u{i}@x.io"))]));
    }
    recs.seal();
    assert_eq!(got(&recs), model);
    assert!(model.keys().all(|h| recs.get(h).is_some()));
    let h = *model.keys().next().unwrap();
    recs.insert(h, "changed", []);
    model.insert(h, ("changed".into(), vec![]));
    assert_eq!(got(&recs), model);
}

#[test]
fn records_fill_chunks_without_moving_and_a_chunk_a_save_holds_is_not_written_again() {
    let mut recs = Recs::bulk();
    let id = |i: u128| format!("user-{i:08}-{}", "x".repeat(usize::try_from(i % 40).unwrap()));
    for i in 0..40_000u128 {
        recs.insert(i, &id(i), [("email", "e@x.io")]);
    }
    let huge = "h".repeat(CHUNK + 10);
    recs.insert(1 << 100, &huge, []);
    recs.seal();
    let chunks = &recs.bytes.list;
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    // Every chunk within 1 MiB but the one of the record larger than that.
    assert!(
        chunks.iter().all(|c| c.len() <= CHUNK || c.len() == str_len(&huge) + 1),
        "{:?}",
        chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
    );
    assert_eq!(recs.get(&(1 << 100)).map(|r| r.id().len()), Some(huge.len()));
    // A save holds the chunks: a record added now goes to a new chunk,
    // and what the save holds reads as it was.
    let saved = recs.packed();
    let before: Vec<(*const u8, usize)> = recs.bytes.list.iter().map(|c| (c.as_ptr(), c.len())).collect();
    recs.insert(7 << 64, "after", []);
    let after: Vec<(*const u8, usize)> = recs.bytes.list.iter().map(|c| (c.as_ptr(), c.len())).collect();
    assert_eq!(&after[..before.len()], &before[..], "no chunk moved or grew");
    assert_eq!(after.len(), before.len() + 1);
    for i in (0..40_000u128).step_by(997) {
        assert_eq!(recs.get(&i).map(|r| r.id().to_string()), Some(id(i)));
    }
    assert_eq!(recs.get(&(7 << 64)).map(|r| r.id()), Some("after"));
    assert_eq!(saved.len(), 40_001);
    let (h, r) = saved.get(0).unwrap();
    assert_eq!((h, r.id().to_string()), (0, id(0)));
    // A file of one record: its chunk is exactly its bytes.
    let mut one = Recs::bulk();
    one.insert(1, "job_20240908_121002_c3f43a", []);
    assert_eq!(one.bytes.list[0].capacity(), str_len("job_20240908_121002_c3f43a") + 1);
}

#[test]
fn a_mark_is_the_low_half_of_a_pass_and_each_record_keeps_its_own() {
    let max = u64::from(u32::MAX);
    for pass in [0, 1, 7, max - 2, max - 1, max, max + 1, u64::MAX - 1] {
        assert_ne!(mark(pass), 0, "{pass}");
        assert_ne!(mark(pass), mark(pass + 1), "{pass}");
    }
    let mut recs = Recs::default();
    recs.insert(1, "a", []);
    recs.insert(2, "b", []);
    recs.get(&1).unwrap().seen().store(mark(9), Ordering::Relaxed);
    assert_eq!(recs.get(&1).unwrap().seen().load(Ordering::Relaxed), mark(9));
    assert_eq!(recs.get(&2).unwrap().seen().load(Ordering::Relaxed), 0);
}

#[test]
fn varints_and_texts_read_back() {
    for n in [0usize, 1, 127, 128, 300, 16_383, 16_384, usize::MAX] {
        let mut out = Vec::new();
        put_varint(&mut out, n);
        assert_eq!(out.len(), varint_len(n), "{n}");
        assert_eq!(Cursor { bytes: &out, at: 0 }.varint(), Some(n));
    }
    let mut out = Vec::new();
    put_str(&mut out, "héllo");
    assert_eq!(out.len(), str_len("héllo"));
    assert_eq!(Cursor { bytes: &out, at: 0 }.str(), Some("héllo"));
    assert_eq!(Cursor { bytes: &out[..3], at: 0 }.str(), None, "cut short");
}

#[test]
fn the_places_read_in_the_order_the_bytes_lie_are_the_records_places_and_marks_split_them() {
    let mut recs = Recs::bulk();
    for i in 0..2000u128 {
        let email = format!("u{i}@x.io");
        assert!(recs.insert(i, &format!("user-{i}"), [("email", email.as_str())]));
    }
    // One record larger than a chunk, in a chunk of its own, and records after it.
    let big = "b".repeat(CHUNK + 10);
    assert!(recs.insert(5000, &big, []));
    assert!(recs.insert(5001, "after-big", [("email", "ab@x.io")]));
    recs.seal();
    // Replaced: its old bytes lie there still, and no entry points at them.
    assert!(recs.insert(7, "seven-again", [("email", "u3@x.io")]));
    assert!(recs.bytes.list.len() > 2, "several chunks");
    let wanted = |id: &str, email: Option<&str>| {
        id == big || id == "after-big" || id == "user-1999" || id.starts_with("user-7") || email == Some("u3@x.io")
    };
    let places = recs.places_where(|r| wanted(r.id(), r.uniques().next().map(|(_, v)| v)));
    let found = recs.look_up_all(&[1999, 5000, 5001, 7, 3, 70, 71, 1]);
    let at = |i: usize| found.slot(i).map(Slot::at).unwrap();
    for (i, want) in [true, true, true, true, true, true, true, false].into_iter().enumerate() {
        assert_eq!(places.contains(&at(i)), want, "text {i}");
    }
    // user-7 (dead), user-70..79, user-700..799, user-1999, big, after-big,
    // user-3, seven-again.
    assert_eq!(places.len(), 1 + 10 + 100 + 1 + 1 + 1 + 1 + 1);
    // Marks: a pass's marked records, and the rest.
    for i in [3u128, 5000] {
        recs.index.get(&i).unwrap().mark(mark(4));
    }
    let mut yes: Vec<RawHash> = recs.marked(mark(4), true).map(|(h, _)| h).collect();
    yes.sort_unstable();
    assert_eq!(yes, [3, 5000]);
    assert_eq!(recs.marked(mark(4), false).count(), recs.len() - 2);
    assert_eq!(recs.marked(mark(5), true).count(), 0);
}

#[test]
fn a_record_past_the_last_chunk_is_refused_and_the_memo_is_marked_short() {
    let mut recs = Recs::bulk();
    recs.bytes.limit = 3;
    let mut saves = Vec::new();
    for i in 0..3u128 {
        assert!(recs.insert(i, &format!("user-{i}"), [("email", "e@x.io")]));
        // Held as a save holds it: the next record goes to a chunk of its own.
        saves.push(recs.packed());
    }
    assert!(!recs.is_short());
    assert_eq!(recs.bytes.list.len(), 3);
    assert!(!recs.insert(3, "user-3", []), "a fourth chunk is past the limit");
    assert!(recs.is_short());
    // What it took reads back; the refused record is not there.
    recs.seal();
    for i in 0..3u128 {
        assert_eq!(recs.get(&i).map(|r| r.id().to_string()), Some(format!("user-{i}")));
    }
    assert!(recs.get(&3).is_none());
    // A short memo added to another makes it short.
    let mut other = Recs::default();
    other.insert(9, "nine", []);
    other.extend(recs);
    assert!(other.is_short());
    assert_eq!(saves.len(), 3);
}
