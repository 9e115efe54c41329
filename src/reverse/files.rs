//! What `reverse` writes: the set of records changed since the last flush
//! (a set, not a list of events: a record changed a thousand times is one
//! entry) and the flush that brings their files up to date, with `export`'s
//! format and atomic writes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use bson::{doc, Bson};
use serde_json::Value;

use crate::error::Fatal;
use crate::export::{export_source, id_key, object_file, remove_file, source_files_in, write_if_changed, Exported};
use crate::layout::{Layout, Shape, SourceSpec};
use crate::sink::Sink;

/// Changed ids of one source above this many are not kept one by one: the
/// whole source is compared instead (memory stays bounded under a flood).
const MAX_IDS: usize = 10_000;

/// What changed since the last flush.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Sources to write whole (array sources, a dropped collection, a flood).
    whole: BTreeSet<usize>,
    /// One-record-per-file sources: changed `_id`s, keyed by [`id_key`].
    ids: BTreeMap<usize, BTreeMap<String, Bson>>,
    /// When the oldest change not yet flushed arrived.
    pub since: Option<tokio::time::Instant>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.whole.is_empty() && self.ids.is_empty()
    }

    fn touched(&mut self) {
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    /// Every file of source `i`.
    pub fn whole(&mut self, i: usize) {
        self.touched();
        self.ids.remove(&i);
        self.whole.insert(i);
    }

    /// Every file of every source.
    pub fn all(&mut self, layout: &Layout) {
        for i in 0..layout.sources.len() {
            self.whole(i);
        }
    }

    /// The record with `_id` `id` of source `i`.
    pub fn id(&mut self, layout: &Layout, i: usize, id: Bson) {
        if self.whole.contains(&i) {
            return;
        }
        if layout.sources.get(i).is_none_or(|s| s.shape == Shape::Array) {
            return self.whole(i);
        }
        self.touched();
        let ids = self.ids.entry(i).or_default();
        ids.insert(id_key(&id), id);
        if ids.len() > MAX_IDS {
            self.whole(i);
        }
    }
}

/// The id a record written in a file holds, keyed like [`id_key`].
fn key_of_record(spec: &SourceSpec, v: &Value) -> Option<String> {
    match v.get(&spec.id_field)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The output folder and what reverse knows of its one-record-per-file sources.
pub struct Files {
    pub layout: Layout,
    pub out: PathBuf,
    /// Per source: id → file below the source's root, for one-record-per-file
    /// sources once known (`None`: read from the folder when first needed).
    names: Vec<Option<HashMap<String, String>>>,
}

impl Files {
    pub fn new(layout: Layout, out: PathBuf) -> Files {
        let names = layout.sources.iter().map(|_| None).collect();
        Files { layout, out, names }
    }

    /// Compare every file with MongoDB and rewrite what differs (`export
    /// --overwrite`), removing job files whose document is gone.
    pub async fn full(&mut self, sink: &Sink) -> Result<Exported, Fatal> {
        let mut done = Exported::default();
        for i in 0..self.layout.sources.len() {
            done.add(&self.whole(sink, i).await?);
        }
        Ok(done)
    }

    async fn whole(&mut self, sink: &Sink, i: usize) -> Result<Exported, Fatal> {
        let Some(spec) = self.layout.sources.get(i) else { return Ok(Exported::default()) };
        let (done, files) = export_source(spec, sink, &self.out, true).await?;
        if spec.shape == Shape::Object {
            self.names[i] = Some(files.into_iter().map(|(rel, id)| (id, rel)).collect());
        }
        Ok(done)
    }

    /// Bring the files of what changed up to date with MongoDB as it is now.
    pub async fn flush(&mut self, sink: &Sink, dirty: &Dirty) -> Result<Exported, Fatal> {
        let mut done = Exported::default();
        for i in &dirty.whole {
            done.add(&self.whole(sink, *i).await?);
        }
        for (i, ids) in &dirty.ids {
            done.add(&self.records(sink, *i, ids).await?);
        }
        Ok(done)
    }

    /// One file per changed record: written from the document, or removed
    /// when the document is gone.
    async fn records(&mut self, sink: &Sink, i: usize, ids: &BTreeMap<String, Bson>) -> Result<Exported, Fatal> {
        let Some(spec) = self.layout.sources.get(i).cloned() else { return Ok(Exported::default()) };
        let root = self.out.join(spec.root.label());
        let mut docs = Vec::new();
        let all: Vec<Bson> = ids.values().cloned().collect();
        for chunk in all.chunks(5_000) {
            docs.extend(sink.find_all(&spec.collection, doc! { "_id": { "$in": chunk.to_vec() } }, None).await?);
        }
        let names = self.names_of(i, &spec)?;
        let mut done = Exported::default();
        let mut seen = HashSet::new();
        for d in &docs {
            let f = object_file(&spec, d)?;
            let id = f.key.clone().unwrap_or_default();
            done.records += 1;
            done.files += 1;
            if write_if_changed(&root.join(&f.rel), &f.bytes)? {
                done.written += 1;
            } else {
                done.unchanged += 1;
            }
            if let Some(old) = names.insert(id.clone(), f.rel.clone()).filter(|old| *old != f.rel) {
                remove_file(&root.join(old))?;
                done.removed += 1;
            }
            seen.insert(id);
        }
        for gone in ids.keys().filter(|k| !seen.contains(*k)) {
            if let Some(old) = names.remove(gone) {
                remove_file(&root.join(old))?;
                done.removed += 1;
            }
        }
        Ok(done)
    }

    /// The id → file map of source `i`, read from its folder the first time.
    fn names_of(&mut self, i: usize, spec: &SourceSpec) -> Result<&mut HashMap<String, String>, Fatal> {
        if self.names[i].is_none() {
            let root = self.out.join(spec.root.label());
            let mut names = HashMap::new();
            for rel in source_files_in(spec, &root)? {
                let path = root.join(&rel);
                let parsed = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
                match parsed.as_ref().and_then(|v| key_of_record(spec, v)) {
                    Some(id) => {
                        names.insert(id, rel);
                    }
                    None => tracing::warn!(file = %path.display(), "Not a record with an id; left alone"),
                }
            }
            self.names[i] = Some(names);
        }
        Ok(self.names[i].get_or_insert_with(HashMap::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dirty_set_holds_each_record_once_and_bounds_itself() {
        let layout = Layout::builtin();
        let jobs = layout.sources.iter().position(|s| s.shape == Shape::Object).unwrap();
        let users = layout.sources.iter().position(|s| s.collection == "users").unwrap();
        let mut d = Dirty::default();
        assert!(d.is_empty() && d.since.is_none());
        for _ in 0..1000 {
            d.id(&layout, jobs, Bson::String("j1".into()));
            d.id(&layout, users, Bson::String("u1".into()));
        }
        assert_eq!(d.ids[&jobs].len(), 1, "a record changed 1,000 times is one entry");
        assert!(d.whole.contains(&users), "an array source is written whole");
        for n in 0..=MAX_IDS {
            d.id(&layout, jobs, Bson::String(format!("j{n}")));
        }
        assert!(d.whole.contains(&jobs) && !d.ids.contains_key(&jobs), "a flood turns into one whole compare");
        assert_eq!(id_key(&Bson::Int32(5)), "5");
    }
}
