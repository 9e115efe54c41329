//! Stage 2, existing: what the target holds for the records a scan found,
//! and for the documents mirrored from the files it read (which may be gone
//! from them). From the target itself, or, for watch's changed files, from
//! its picture when it has one.
//!
//! Invariant: every document the mirror wrote from a file the scan read in
//! full (or found missing) is in the result, so a record gone from the files
//! is seen as gone.

use std::collections::{HashMap, HashSet};

use super::memo::{IdKey, Known, Memory};
use super::scan::Scanned;
use super::target::{Existing, Target};
use super::Engine;
use crate::error::Fatal;

/// What the target holds for the scanned files of one source.
pub async fn for_scan<T: Target>(
    engine: &Engine,
    target: &T,
    memory: Option<&Memory>,
    scanned: &Scanned,
) -> Result<HashMap<String, Existing>, Fatal> {
    let mut found = held(engine, target, memory, scanned).await?;
    // Documents that must be written whatever their content hash says.
    if let Some(m) = memory {
        let spec = &engine.layout.sources[scanned.spec];
        for id in m.take_forced(&spec.collection, scanned.candidates.iter().map(|c| c.mapped.id.as_str())) {
            if let Some(ex) = found.get_mut(&id) {
                ex.hash = None;
            }
        }
    }
    Ok(found)
}

async fn held<T: Target>(
    engine: &Engine,
    target: &T,
    memory: Option<&Memory>,
    scanned: &Scanned,
) -> Result<HashMap<String, Existing>, Fatal> {
    let spec = &engine.layout.sources[scanned.spec];
    if scanned.complete {
        return target.hashes(spec).await;
    }
    if let Some(Pictured { mut found, ask }) = memory.and_then(|m| from_picture(m, &spec.collection, scanned)) {
        if !ask.is_empty() {
            // Documents of files the memo does not cover whose records are
            // gone: the picture knows they are there, the target knows which.
            for (id, ex) in target.existing_from_files(spec, &ask).await? {
                found.entry(id).or_insert(ex);
            }
        }
        return Ok(found);
    }
    // Without a picture: the records found, and the documents of these files
    // whose records are gone. Where the memo covers a file, those are its
    // vanished records; other files are asked for whole.
    let mut ids: Vec<String> = scanned.candidates.iter().map(|c| c.mapped.id.clone()).collect();
    ids.extend(scanned.vanished.iter().filter(|v| scanned.memo_covered.contains(&*v.rel)).map(|v| v.id.to_string()));
    ids.sort();
    ids.dedup();
    let rels: Vec<String> = scanned
        .read_ok
        .iter()
        .chain(&scanned.missing)
        .filter(|r| !scanned.memo_covered.contains(*r))
        .map(|r| r.to_string())
        .collect();
    if ids.len() > LOOKUP_MAX {
        // Most of a large file changed (an app that rewrote it in another
        // format while watch was down): one read of the collection, kept to
        // what the two lookups below would have found.
        tracing::debug!(collection = %spec.collection, ids = ids.len(), "Reading the whole collection instead of looking ids up");
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let files: HashSet<&str> = rels.iter().map(String::as_str).collect();
        let all = target.existing_all(spec).await?;
        return Ok(all
            .into_iter()
            .filter(|(id, e)| wanted.contains(id.as_str()) || e.source.as_deref().is_some_and(|s| files.contains(s)))
            .collect());
    }
    let mut found = target.existing(spec, &ids).await?;
    if !rels.is_empty() {
        found.extend(target.existing_from_files(spec, &rels).await?);
    }
    Ok(found)
}

/// Beyond this many ids, what the target holds is read whole instead of
/// looked up by id, 5,000 at a time: when most of a collection is asked for,
/// both read most of its documents, and a server that answers `_id: {$in}`
/// by scanning the collection (the test server) does so once per lookup (a
/// restart after 100,000 users were rewritten took 7.5 minutes there).
const LOOKUP_MAX: usize = 20_000;

/// What the picture knows of a document.
fn known(k: &Known) -> Existing {
    Existing { hash: Some(k.hash_text().into()), source: Some(Box::from(&*k.source)), ..Default::default() }
}

/// What watch's picture says of a scan's documents.
struct Pictured {
    found: HashMap<String, Existing>,
    /// Files the memo does not cover that, as the picture has it, hold
    /// documents whose records are gone: their ids are asked of the target.
    ask: Vec<String>,
}

/// The same, from watch's picture of the collection (`None` without one).
fn from_picture(memory: &Memory, collection: &str, scanned: &Scanned) -> Option<Pictured> {
    let picture = memory.picture.lock().ok()?;
    let coll = picture.get(collection)?;
    let mut found = HashMap::new();
    for c in &scanned.candidates {
        if let Some(k) = coll.get(memory.id_key(&c.mapped.id)) {
            found.insert(c.mapped.id.clone(), known(k));
        }
    }
    // Documents of these files whose records are no longer there: of the
    // files the memo covers, they are among the vanished records.
    for v in scanned.vanished.iter().filter(|v| scanned.memo_covered.contains(&*v.rel)) {
        if let Some(k) = coll.get(memory.id_key(&v.id)) {
            found.entry(v.id.to_string()).or_insert_with(|| known(k));
        }
    }
    // Of the others (new files, and files whose memo was forgotten), every
    // record is a candidate or unchanged: a document pictured there that is
    // neither is gone from its file.
    let uncovered: HashSet<&str> = scanned
        .read_ok
        .iter()
        .chain(&scanned.missing)
        .filter(|r| !scanned.memo_covered.contains(*r))
        .map(|r| &**r)
        .collect();
    let mut ask = Vec::new();
    if !uncovered.is_empty() {
        let present: HashSet<IdKey> = scanned
            .candidates
            .iter()
            .map(|c| c.mapped.id.as_str())
            .chain(scanned.unchanged.iter())
            .map(|id| memory.id_key(id))
            .collect();
        let mut files: HashSet<&str> = HashSet::new();
        for (key, k) in coll.iter() {
            if uncovered.contains(&*k.source) && !present.contains(&key) {
                files.insert(&k.source);
            }
        }
        ask = files.into_iter().map(str::to_string).collect();
        ask.sort_unstable();
    }
    Some(Pictured { found, ask })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::memo::MemoEntry;
    use crate::reconcile::picture::Coll;
    use std::sync::Arc;

    #[test]
    fn the_picture_finds_a_covered_files_gone_documents_by_id_and_names_the_uncovered_files_to_ask() {
        let memory = Memory::default();
        let rel = |j: &str| -> Arc<str> { Arc::from(format!("artifacts/jobs/{j}.json")) };
        let pictured = ["j1", "j2", "j3", "j4"]
            .map(|j| (memory.id_key(j), Known::new("0123456789abcdef0123456789abcdef", rel(j))));
        memory.picture.lock().unwrap().insert("training_jobs", Coll::build(pictured.to_vec()));
        // j1.json and j2.json are gone (the memo held j1.json's record); j3.json
        // is new to the memo, and its one record is unchanged; j4.json was not scanned.
        let mut scanned = Scanned {
            read_ok: HashSet::from([rel("j3")]),
            missing: HashSet::from([rel("j1"), rel("j2")]),
            memo_covered: HashSet::from([rel("j1")]),
            vanished: vec![MemoEntry { rel: rel("j1"), raw_hash: 1, id: "j1".into() }],
            ..Default::default()
        };
        scanned.unchanged.push("j3");
        let Pictured { found, ask } = from_picture(&memory, "training_jobs", &scanned).unwrap();
        let mut ids: Vec<&str> = found.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["j1"], "the covered file's gone record, by id");
        assert_eq!(found["j1"].source.as_deref(), Some("artifacts/jobs/j1.json"));
        assert_eq!(ask, ["artifacts/jobs/j2.json"], "only the uncovered file with a document whose record is gone");
        assert!(from_picture(&memory, "users", &scanned).is_none(), "no picture of users yet");
    }
}
