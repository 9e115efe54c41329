//! Dual-write drift, found as it happens (issue 14, item 3): every write to a
//! mirrored collection that the mirror did not make is compared with its
//! file record once it has had `--drift-grace-secs` to settle.
//!
//! The comparison is `verify`'s, record by record: equal; newer in MongoDB
//! (expected while the app writes MongoDB first and the file follows: not
//! drift); or drift of one kind:
//! - `different`: the document differs from its record and is not newer;
//! - `missing`: the document was deleted while its record is in the files;
//! - `extra`: the document has no record in the files.
//!
//! Drift is logged once when found and once when resolved, kept in
//! `mirror_drift` (one document per drifting record, removed when it
//! converges), and counted in the `docmirror_drift_records` gauge. Drifting
//! records are compared again every few seconds, so a repair by anyone (the
//! file catching up, `--conflict file-wins`, an operator) clears them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};

use crate::error::Fatal;
use crate::reconcile::memo::Memory;
use crate::reconcile::scan::scan_source;
use crate::reconcile::Engine;
use crate::sink::{Sink, WriteOp};
use crate::source::SourceFile;
use crate::verify::{compare, Outcome};

/// Where the drifting records are listed.
pub const DRIFT: &str = "mirror_drift";
/// More writes than this waiting to be compared: a full rescan instead.
pub const PENDING_LIMIT: usize = 100_000;
/// Drifting records are compared again this often.
const RECHECK: Duration = Duration::from_secs(2);

/// A drifting record, as listed in `mirror_drift`.
#[derive(Debug, Clone, PartialEq)]
pub struct Drifting {
    pub kind: &'static str,
    pub first_seen: bson::DateTime,
    pub source: String,
    pub fields: Vec<String>,
}

/// What the tracker asks of watch.
pub trait Requests: Send + Sync {
    /// Reconcile everything (`why` goes to the log).
    fn full(&self, why: String);
    /// Reconcile this file now (a repair under `--conflict file-wins`).
    fn file(&self, file: SourceFile);
}

/// The drift tracker's state (see the module docs).
pub struct Tracker {
    pub engine: Arc<Engine>,
    pub sink: Sink,
    pub memory: Arc<Memory>,
    pub grace: Duration,
    /// `--conflict file-wins`: drift is repaired by writing the file's version.
    pub repair: bool,
    /// Written by others, waiting for their grace: first seen (now and as a date).
    pending: HashMap<(String, String), (Instant, bson::DateTime)>,
    drifting: HashMap<(String, String), Drifting>,
    last_recheck: Instant,
}

impl Tracker {
    pub fn new(engine: Arc<Engine>, sink: Sink, memory: Arc<Memory>, grace: Duration, repair: bool) -> Tracker {
        Tracker {
            engine,
            sink,
            memory,
            grace,
            repair,
            pending: HashMap::new(),
            drifting: HashMap::new(),
            last_recheck: Instant::now(),
        }
    }

    /// Start from what `mirror_drift` lists (drift found before a restart).
    pub async fn load(&mut self) -> Result<(), Fatal> {
        for d in self.sink.find_all(DRIFT, doc! {}, None).await? {
            let (Ok(c), Ok(id)) = (d.get_str("collection"), d.get_str("id")) else { continue };
            let first = d.get_datetime("first_seen").copied().unwrap_or_else(|_| bson::DateTime::now());
            self.pending.insert((c.to_string(), id.to_string()), (Instant::now(), first));
        }
        Ok(())
    }

    /// Someone else wrote (or deleted) this document.
    pub fn touched(&mut self, collection: String, id: String, requests: &dyn Requests) {
        let key = (collection, id);
        if self.drifting.contains_key(&key) {
            // Compare it at the next tick, whatever its grace.
            self.last_recheck = Instant::now().checked_sub(RECHECK).unwrap_or_else(Instant::now);
            return;
        }
        self.pending.entry(key).or_insert_with(|| (Instant::now(), bson::DateTime::now()));
        if self.pending.len() > PENDING_LIMIT {
            self.pending.clear();
            requests.full(format!("more than {PENDING_LIMIT} writes in MongoDB to compare one by one"));
        }
    }

    /// When the next comparison is due: the first write to reach the end
    /// of its grace, or the next recheck of drifting records.
    pub fn next_due(&self) -> tokio::time::Instant {
        let pending = self.pending.values().map(|(at, _)| *at + self.grace).min();
        let recheck = (!self.drifting.is_empty()).then_some(self.last_recheck + RECHECK);
        let next =
            pending.into_iter().chain(recheck).min().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::time::Instant::from_std(next)
    }

    /// Records drifting now, by (collection, kind).
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for ((c, _), d) in &self.drifting {
            *out.entry((c.clone(), d.kind.to_string())).or_default() += 1;
        }
        out
    }

    /// Compare what is due: writes past their grace, and drifting records.
    pub async fn tick(&mut self, requests: &dyn Requests) -> Result<(), Fatal> {
        let now = Instant::now();
        let mut due: Vec<((String, String), bson::DateTime)> = Vec::new();
        self.pending.retain(|k, (at, first)| {
            let ready = now.duration_since(*at) >= self.grace;
            if ready {
                due.push((k.clone(), *first));
            }
            !ready
        });
        if now.duration_since(self.last_recheck) >= RECHECK {
            self.last_recheck = now;
            due.extend(self.drifting.iter().map(|(k, d)| (k.clone(), d.first_seen)));
        }
        if due.is_empty() {
            return Ok(());
        }
        let mut by_coll: HashMap<String, Vec<(String, bson::DateTime)>> = HashMap::new();
        for ((c, id), first) in due {
            by_coll.entry(c).or_default().push((id, first));
        }
        for (coll, ids) in by_coll {
            let found = self.compare(&coll, &ids).await?;
            for (id, first) in ids {
                let key = (coll.clone(), id);
                let now_drifting = found.get(&key.1).cloned().map(|(kind, source, fields)| Drifting {
                    kind,
                    first_seen: first,
                    source,
                    fields,
                });
                self.settle(key, now_drifting, requests).await?;
            }
        }
        self.engine.metrics.set_drift(self.counts());
        Ok(())
    }

    /// Record what one comparison found: new drift, drift resolved, or nothing.
    async fn settle(
        &mut self,
        key: (String, String),
        now: Option<Drifting>,
        requests: &dyn Requests,
    ) -> Result<(), Fatal> {
        let before = self.drifting.get(&key).cloned();
        match (before, now) {
            (None, Some(d)) => {
                tracing::warn!(collection = %key.0, id = %key.1, kind = d.kind, source = %d.source, fields = ?d.fields, first_seen = %d.first_seen.try_to_rfc3339_string().unwrap_or_default(), "Drift: MongoDB and the files disagree");
                self.store(&key, &d).await?;
                if self.repair {
                    self.prepare_repair(&key, &d, requests);
                }
                self.drifting.insert(key, d);
            }
            (Some(_), None) => {
                tracing::info!(collection = %key.0, id = %key.1, "Drift resolved");
                let op = WriteOp::Delete { coll: DRIFT.into(), filter: doc! { "_id": drift_id(&key) } };
                self.sink.write(vec![op]).await?;
                self.drifting.remove(&key);
            }
            (Some(old), Some(d)) if old.kind != d.kind => {
                self.store(&key, &d).await?;
                self.drifting.insert(key, d);
            }
            _ => {}
        }
        Ok(())
    }

    async fn store(&self, key: &(String, String), d: &Drifting) -> Result<(), Fatal> {
        let fields: Vec<Bson> = d.fields.iter().map(|f| Bson::String(f.clone())).collect();
        let op = WriteOp::Update {
            coll: DRIFT.into(),
            filter: doc! { "_id": drift_id(key) },
            update: doc! { "$set": {
                "collection": &key.0, "id": &key.1, "kind": d.kind, "first_seen": d.first_seen,
                "source": &d.source, "fields": fields, "checked_at": bson::DateTime::now(),
            } },
            upsert: true,
        };
        self.sink.write(vec![op]).await?;
        Ok(())
    }

    /// `--conflict file-wins`: have watch write the file's version of a
    /// record whose document differs or is gone: its memo entry is moved so
    /// the record is mapped again, and the core is told to rewrite it.
    fn prepare_repair(&self, key: &(String, String), d: &Drifting, requests: &dyn Requests) {
        if d.kind == "extra" {
            return;
        }
        let rel = d.source.split('[').next().unwrap_or_default();
        let Some(file) = super::proof::file_of(&self.engine, rel) else { return };
        if let Ok(mut memo) = self.memory.memo.lock() {
            if let Some(fm) = memo.get_mut(rel) {
                fm.digest = None;
                fm.stamp = None;
                let keys: Vec<u128> = fm.recs.iter().filter(|(_, r)| r.id() == key.1).map(|(h, _)| h).collect();
                for h in keys {
                    fm.recs.rekey(&h, !h);
                }
            }
        }
        self.memory.force(&key.0, &key.1);
        requests.file(file);
    }

    /// Compare these documents of a collection with their file records: the
    /// drifting ones, with their kind, record location and differing fields.
    async fn compare(
        &self,
        coll: &str,
        ids: &[(String, bson::DateTime)],
    ) -> Result<HashMap<String, (&'static str, String, Vec<String>)>, Fatal> {
        let wanted: HashSet<String> = ids.iter().map(|(id, _)| id.clone()).collect();
        let list: Vec<String> = wanted.iter().cloned().collect();
        let docs: HashMap<String, Document> = self
            .sink
            .find_by_ids(coll, &list, None)
            .await?
            .into_iter()
            .filter_map(|d| Some((super::id_string(d.get("_id")?), d)))
            .collect();
        let mut out = HashMap::new();
        let mut placed: HashSet<String> = HashSet::new();
        for (spec_idx, spec) in self.engine.layout.sources.iter().enumerate().filter(|(_, s)| s.collection == coll) {
            let files = self.files_holding(spec_idx, &wanted, &docs);
            if files.is_empty() {
                continue;
            }
            let (e, spec_c) = (self.engine.clone(), spec.clone());
            let (want, docs_c) = (wanted.clone(), docs.clone());
            let found = tokio::task::spawn_blocking(move || {
                let scanned = scan_source(&e, None, crate::reconcile::scan::Texts::None, spec_idx, Some(files), None)?;
                let mut out = Vec::new();
                for c in scanned.candidates.iter().filter(|c| want.contains(&c.mapped.id)) {
                    let kind = match compare(&spec_c, c, docs_c.get(&c.mapped.id)) {
                        Outcome::Same | Outcome::Newer(_) => None,
                        Outcome::Missing => Some(("missing", Vec::new())),
                        Outcome::Different(fields) => Some(("different", fields)),
                    };
                    out.push((c.mapped.id.clone(), c.locate(), kind));
                }
                Ok::<_, Fatal>(out)
            })
            .await
            .map_err(Fatal::task("drift"))??;
            for (id, at, kind) in found {
                placed.insert(id.clone());
                if let Some((kind, fields)) = kind {
                    out.insert(id, (kind, at, fields));
                }
            }
        }
        // Documents with no record in the files (not even a rejected one).
        for (id, d) in &docs {
            if !placed.contains(id) && !self.rejected(coll, id).await? {
                let source = d.get_document("_mirror").and_then(|m| m.get_str("source")).unwrap_or("").to_string();
                out.insert(id.clone(), ("extra", source, Vec::new()));
            }
        }
        Ok(out)
    }

    /// Whether a record with this id is in `mirror_rejects` (verify does not
    /// call its document extra either).
    async fn rejected(&self, coll: &str, id: &str) -> Result<bool, Fatal> {
        let filter = doc! { "collection": coll, "id": id };
        Ok(!self.sink.find_all(crate::reconcile::REJECTS, filter, Some(doc! { "_id": 1 })).await?.is_empty())
    }

    /// The files of a source that hold (or held) these ids: from the memo,
    /// and from the documents' `_mirror.source`.
    fn files_holding(
        &self,
        spec_idx: usize,
        ids: &HashSet<String>,
        docs: &HashMap<String, Document>,
    ) -> Vec<SourceFile> {
        let spec = &self.engine.layout.sources[spec_idx];
        let mut rels: HashSet<String> = docs
            .values()
            .filter_map(|d| d.get_document("_mirror").ok()?.get_str("source").ok().map(str::to_string))
            .filter(|r| spec.owns_rel(r))
            .collect();
        if let Ok(memo) = self.memory.memo.lock() {
            for (rel, fm) in memo.iter().filter(|(rel, _)| spec.owns_rel(rel)) {
                if fm.recs.values().any(|r| ids.contains(r.id())) {
                    rels.insert(rel.to_string());
                }
            }
        }
        let mut files: Vec<SourceFile> = rels.iter().filter_map(|r| super::proof::file_of(&self.engine, r)).collect();
        files.sort();
        files
    }
}

fn drift_id(key: &(String, String)) -> String {
    format!("{}/{}", key.0, key.1)
}
