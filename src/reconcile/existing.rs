//! Stage 2, existing: what the target holds for the records a scan found,
//! and for the documents mirrored from the files it read (which may be gone
//! from them). From the target itself, or, for watch's changed files, from
//! its picture when it has one.
//!
//! Invariant: every document the mirror wrote from a file the scan read in
//! full (or found missing) is in the result, so a record gone from the files
//! is seen as gone.

use std::collections::{HashMap, HashSet};

use std::sync::Arc;

use super::memo::{Known, Memory};
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
    if let Some(found) = memory.and_then(|m| from_picture(m, &spec.collection, scanned)) {
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
        .filter(|r| !scanned.memo_covered.contains(*r))
        .chain(&scanned.missing)
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

/// The same, from watch's picture of the collection (`None` without one).
fn from_picture(memory: &Memory, collection: &str, scanned: &Scanned) -> Option<HashMap<String, Existing>> {
    let picture = memory.picture.lock().ok()?;
    let coll: &HashMap<Arc<str>, Known> = picture.get(collection)?;
    let mut out = HashMap::new();
    for c in &scanned.candidates {
        if let Some(k) = coll.get(c.mapped.id.as_str()) {
            out.insert(c.mapped.id.clone(), known(k));
        }
    }
    // Documents of these files whose records are no longer there. When the
    // memo covers every file read, they are among the vanished records;
    // otherwise look through the picture of the whole collection.
    let covered = scanned.read_ok.iter().all(|r| scanned.memo_covered.contains(r)) && scanned.missing.is_empty();
    if covered {
        for v in &scanned.vanished {
            if let Some(k) = coll.get(&*v.id) {
                out.entry(v.id.to_string()).or_insert_with(|| known(k));
            }
        }
        return Some(out);
    }
    let present: HashSet<&str> =
        scanned.candidates.iter().map(|c| c.mapped.id.as_str()).chain(scanned.unchanged.iter()).collect();
    for (id, k) in coll {
        if (scanned.read_ok.contains(&*k.source) || scanned.missing.contains(&*k.source)) && !present.contains(&**id) {
            out.entry(id.to_string()).or_insert_with(|| known(k));
        }
    }
    Some(out)
}
