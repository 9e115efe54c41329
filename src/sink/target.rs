//! The MongoDB sink as a reconcile [`Target`]: what the core's requests look
//! like as MongoDB documents, filters and updates. Each document carries
//! `_mirror: {source, hash, fields, at}`; an update `$set`s the record's
//! fields and `$unset`s the fields the mirror owned that the record lost;
//! under newer-wins the version condition is part of the update's filter, so
//! the check and the write are one server-side operation.

use std::collections::{HashMap, HashSet};

use bson::{doc, Bson, Document};

use super::{Sink, WriteOp};
use crate::error::Fatal;
use crate::layout::SourceSpec;
use crate::mapping::Reject;
use crate::reconcile::rejects::RejectRecord;
use crate::reconcile::scan::Candidate;
use crate::reconcile::target::{Existing, Held, Inspect, Outcome, Target, Write};
use crate::reconcile::{ARCHIVE, REJECTS};

impl Target for Sink {
    async fn hashes(&self, spec: &SourceSpec) -> Result<HashMap<String, Existing>, Fatal> {
        // Only the hash: on a large collection every projected field costs the server.
        let projection = Some(doc! { "_mirror.hash": 1 });
        Ok(self.find_map(&spec.collection, doc! {}, projection, |d| existing_from(spec, &d)).await?)
    }

    async fn existing(&self, spec: &SourceSpec, ids: &[String]) -> Result<HashMap<String, Existing>, Fatal> {
        let docs = self.find_by_ids(&spec.collection, ids, Some(existing_projection(spec))).await?;
        Ok(docs.iter().filter_map(|d| existing_from(spec, d)).collect())
    }

    async fn existing_all(&self, spec: &SourceSpec) -> Result<HashMap<String, Existing>, Fatal> {
        Ok(self
            .find_map(&spec.collection, doc! {}, Some(existing_projection(spec)), |d| existing_from(spec, &d))
            .await?)
    }

    async fn existing_from_files(
        &self,
        spec: &SourceSpec,
        rels: &[String],
    ) -> Result<HashMap<String, Existing>, Fatal> {
        let rels: Vec<Bson> = rels.iter().map(|r| Bson::String(r.clone())).collect();
        let filter = doc! { "_mirror.source": { "$in": rels } };
        Ok(self
            .find_map(&spec.collection, filter, Some(existing_projection(spec)), |d| existing_from(spec, &d))
            .await?)
    }

    async fn passwords(
        &self,
        spec: &SourceSpec,
        field: &str,
        ids: &[String],
    ) -> Result<HashMap<String, String>, Fatal> {
        let docs = self.find_by_ids(&spec.collection, ids, Some(doc! { field: 1 })).await?;
        Ok(docs
            .iter()
            .filter_map(|d| Some((d.get_str("_id").ok()?.to_string(), d.get_str(field).ok()?.to_string())))
            .collect())
    }

    async fn write(&self, spec: &SourceSpec, writes: &[Write<'_>], newer_wins: bool) -> Result<Vec<Outcome>, Fatal> {
        let ops: Vec<WriteOp> = writes
            .iter()
            .map(|w| match w {
                Write::Insert(c) => insert_op(spec, c),
                Write::Update { c, was } => update_op(spec, c, was, newer_wins),
            })
            .collect();
        Ok(Sink::write(self, ops).await?)
    }

    async fn holder(
        &self,
        spec: &SourceSpec,
        id: &str,
        unique: &[(String, String)],
    ) -> Result<Option<(String, String)>, Fatal> {
        for (field, value) in unique {
            let filter = doc! { field.clone(): value, "_id": { "$ne": id } };
            let found = self.find_all(&spec.collection, filter, Some(doc! { "_id": 1 })).await?;
            if let Some(other) = found.first().and_then(|d| d.get("_id")) {
                return Ok(Some((value.clone(), id_string(other))));
            }
        }
        Ok(None)
    }

    async fn release(
        &self,
        spec: &SourceSpec,
        writes: &[Write<'_>],
        fields: &[String],
        newer_wins: bool,
    ) -> Result<(), Fatal> {
        let ops: Vec<WriteOp> = writes
            .iter()
            .map(|w| {
                let (c, held) = match w {
                    Write::Update { c, was } => (*c, was.version.clone()),
                    Write::Insert(c) => (*c, Held::Unread),
                };
                // A value no real one can be (`.invalid` is reserved), unique per document.
                let mut set: Document = fields
                    .iter()
                    .map(|f| (f.clone(), Bson::String(format!("released-{}@docmirror.invalid", c.mapped.id))))
                    .collect();
                set.insert("_mirror.hash", "released");
                let filter = update_filter(spec, c, &held, newer_wins);
                WriteOp::Update { coll: spec.collection.clone(), filter, update: doc! { "$set": set }, upsert: false }
            })
            .collect();
        for r in Sink::write(self, ops).await? {
            if let Outcome::Failed { message, .. } = r {
                return Err(Fatal::Mongo(format!("cannot release unique values in {}: {message}", spec.collection)));
            }
        }
        Ok(())
    }

    async fn count(&self, spec: &SourceSpec) -> Result<u64, Fatal> {
        self.collection(&spec.collection)
            .estimated_document_count()
            .await
            .map_err(|e| Fatal::Mongo(format!("cannot count {}: {}", spec.collection, self.scrub(&e.to_string()))))
    }

    async fn delete(&self, spec: &SourceSpec, gone: &[(String, Existing)], archive: bool) -> Result<Vec<bool>, Fatal> {
        // Archive first, so a crash between the two never loses a deleted
        // document; entries of documents that were not deleted go again below.
        let archived = if archive { self.archive(spec, gone).await? } else { HashMap::new() };
        let ops: Vec<WriteOp> = gone
            .iter()
            .map(|(id, ex)| {
                let mut filter = doc! { "_id": id };
                if let Some(h) = &ex.hash {
                    filter.insert("_mirror.hash", &**h);
                }
                WriteOp::Delete { coll: spec.collection.clone(), filter }
            })
            .collect();
        let outcomes = Sink::write(self, ops).await?;
        // A delete that matched nothing (the document changed or went meanwhile)
        // did not delete; where the server gave no per-delete count, look.
        let unknown: Vec<String> = gone
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, Outcome::Applied { matched: None }))
            .map(|((id, _), _)| id.clone())
            .collect();
        let still = if unknown.is_empty() { HashMap::new() } else { Target::existing(self, spec, &unknown).await? };
        let deleted: Vec<bool> = gone
            .iter()
            .zip(&outcomes)
            .map(|((id, _), o)| match o {
                Outcome::Applied { matched: Some(n) } => *n > 0,
                Outcome::Applied { matched: None } => !still.contains_key(id),
                _ => false,
            })
            .collect();
        let stale: Vec<Bson> = gone
            .iter()
            .zip(&deleted)
            .filter(|(_, d)| !**d)
            .filter_map(|((id, _), _)| archived.get(id).cloned())
            .collect();
        if !stale.is_empty() {
            let ops = vec![WriteOp::DeleteMany { coll: ARCHIVE.to_string(), filter: doc! { "_id": { "$in": stale } } }];
            Sink::write(self, ops).await?;
        }
        Ok(deleted)
    }

    async fn reject_keys(&self, collection: &str, files: Option<&[String]>) -> Result<HashSet<String>, Fatal> {
        let filter = match files {
            None => doc! { "collection": collection },
            Some(rels) => {
                let rels: Vec<Bson> = rels.iter().map(|r| Bson::String(r.clone())).collect();
                doc! { "collection": collection, "source": { "$in": rels } }
            }
        };
        let keys = self
            .find_map(REJECTS, filter, Some(doc! { "_id": 1 }), |d| d.get_str("_id").ok().map(str::to_string))
            .await?;
        Ok(keys)
    }

    async fn add_rejects(&self, rejects: &[RejectRecord]) -> Result<(), Fatal> {
        let ops: Vec<WriteOp> =
            rejects.iter().map(|r| WriteOp::Insert { coll: REJECTS.to_string(), doc: reject_document(r) }).collect();
        for r in Sink::write(self, ops).await? {
            if let Outcome::Failed { message, .. } = r {
                return Err(Fatal::Mongo(format!("cannot store a reject in {REJECTS}: {message}")));
            }
        }
        Ok(())
    }

    async fn drop_rejects(&self, keys: &[String]) -> Result<(), Fatal> {
        let keys: Vec<Bson> = keys.iter().map(|k| Bson::String(k.clone())).collect();
        let ops = vec![WriteOp::DeleteMany { coll: REJECTS.to_string(), filter: doc! { "_id": { "$in": keys } } }];
        Sink::write(self, ops).await?;
        Ok(())
    }
}

impl Inspect for Sink {
    fn name(&self) -> &'static str {
        "MongoDB"
    }

    async fn documents(&self, spec: &SourceSpec) -> Result<Vec<Document>, Fatal> {
        Ok(self.find_all(&spec.collection, doc! {}, None).await?)
    }

    async fn documents_map<U, F>(&self, spec: &SourceSpec, f: F) -> Result<Vec<U>, Fatal>
    where
        U: Send,
        F: Fn(Document) -> Option<U> + Send + Sync,
    {
        Ok(self.find_map(&spec.collection, doc! {}, None, f).await?)
    }

    async fn stored_rejects(&self, collection: &str) -> Result<Vec<Document>, Fatal> {
        Ok(self.find_all(REJECTS, doc! { "collection": collection }, None).await?)
    }
}

impl Sink {
    /// Copy these documents, as they are now, into `mirror_archive`; returns
    /// the archive key of each copy made, by id.
    async fn archive(&self, spec: &SourceSpec, gone: &[(String, Existing)]) -> Result<HashMap<String, Bson>, Fatal> {
        let ids: Vec<String> = gone.iter().map(|(id, _)| id.clone()).collect();
        let docs = self.find_by_ids(&spec.collection, &ids, None).await?;
        let now = bson::DateTime::now();
        let mut keys = Vec::new();
        let ops: Vec<WriteOp> = docs
            .into_iter()
            .map(|d| {
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                let hash =
                    d.get_document("_mirror").ok().and_then(|m| m.get_str("hash").ok()).unwrap_or("").to_string();
                let key = Bson::Document(doc! { "collection": &spec.collection, "id": id.clone(), "hash": hash });
                keys.push((id_string(&id), key.clone()));
                WriteOp::Insert {
                    coll: ARCHIVE.to_string(),
                    doc: doc! { "_id": key, "collection": &spec.collection, "doc_id": id, "deleted_at": now, "document": d },
                }
            })
            .collect();
        let mut made = HashMap::new();
        for ((id, key), r) in keys.into_iter().zip(Sink::write(self, ops).await?) {
            match r {
                Outcome::Applied { .. } => {
                    made.insert(id, key);
                }
                // The same version was archived before (deleted, restored, deleted again).
                Outcome::DuplicateKey { .. } => {}
                Outcome::Failed { message, .. } => {
                    return Err(Fatal::Mongo(format!(
                        "cannot archive a document of {} before deleting it: {message}",
                        spec.collection
                    )))
                }
            }
        }
        Ok(made)
    }
}

/// A document id as the mirror names it: string ids as they are, others as their BSON text
/// (shared by verify and the change-stream side, so both name a document alike).
pub fn id_string(b: &Bson) -> String {
    match b {
        Bson::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn existing_projection(spec: &SourceSpec) -> Document {
    let mut p = doc! { "_mirror.hash": 1, "_mirror.source": 1, "_mirror.fields": 1 };
    if let Some(v) = &spec.version_field {
        p.insert(v.clone(), 1);
    }
    p
}

fn existing_from(spec: &SourceSpec, d: &Document) -> Option<(String, Existing)> {
    let id = id_string(d.get("_id")?);
    let m = d.get_document("_mirror").ok();
    let ex = Existing {
        hash: m.and_then(|m| m.get_str("hash").ok()).map(Box::from),
        source: m.and_then(|m| m.get_str("source").ok()).map(Box::from),
        fields: m
            .and_then(|m| m.get_array("fields").ok())
            .map(|a| a.iter().filter_map(|b| b.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        version: match spec.version_field.as_ref().and_then(|v| d.get(v)) {
            None | Some(Bson::Null) => Held::Absent,
            Some(Bson::DateTime(t)) => Held::Date(*t),
            Some(other) => Held::Other(Box::new(other.clone())),
        },
    };
    Some((id, ex))
}

fn mirror_doc(c: &Candidate) -> Document {
    doc! {
        "source": &*c.rel,
        "hash": &c.mapped.hash,
        "fields": c.mapped.fields(),
        "at": bson::DateTime::now(),
    }
}

fn insert_op(spec: &SourceSpec, c: &Candidate) -> WriteOp {
    let mut d = c.mapped.doc.clone();
    d.insert("_mirror", mirror_doc(c));
    WriteOp::Insert { coll: spec.collection.clone(), doc: d }
}

fn update_op(spec: &SourceSpec, c: &Candidate, was: &Existing, newer_wins: bool) -> WriteOp {
    let mut set = c.mapped.doc.clone();
    set.remove("_id");
    set.insert("_mirror", mirror_doc(c));
    let mut update = doc! { "$set": set };
    let fields = c.mapped.fields();
    let removed: Document = was
        .fields
        .iter()
        .filter(|f| !fields.contains(f) && f.as_str() != "_id" && f.as_str() != "_mirror")
        .map(|f| (f.clone(), Bson::String(String::new())))
        .collect();
    if !removed.is_empty() {
        update.insert("$unset", removed);
    }
    let filter = update_filter(spec, c, &was.version, newer_wins);
    WriteOp::Update { coll: spec.collection.clone(), filter, update, upsert: false }
}

/// `{_id}` plus, under newer-wins, "MongoDB still holds what the core
/// compared": the exact value of another form, a date not newer than the
/// file's, or (read as missing or null) still nothing. The check and the write
/// are one server-side operation; a document changed in between is refused
/// and planned again from a fresh read (the core's settle round).
///
/// Each condition is one field's own clause, never a top-level `$and`/`$or`:
/// every planner then finds the document through `_id` alone (SecantusDB
/// scans the whole collection for a filter with a top-level operator, which
/// made one watch update on a 100k-document collection take 0.7 s).
fn update_filter(spec: &SourceSpec, c: &Candidate, was: &Held, newer_wins: bool) -> Document {
    let mut f = doc! { "_id": &c.mapped.id };
    let (true, Some(vf), Some(v)) = (newer_wins, &spec.version_field, c.mapped.version) else { return f };
    let clause = match was {
        Held::Other(b) => (**b).clone(),
        // `$lte` with a date matches only dates: a version stored meanwhile as
        // a string, a number or nothing is refused.
        Held::Date(_) | Held::Unread => Bson::Document(doc! { "$lte": v }),
        // `null` matches a missing field and a null one.
        Held::Absent => Bson::Null,
    };
    f.insert(vf.clone(), clause);
    f
}

/// A reject as stored in `mirror_rejects`.
fn reject_document(r: &RejectRecord) -> Document {
    let mut d = doc! {
        "_id": &r.key,
        "collection": &r.collection,
        "source": &r.rel,
        "position": r.position.and_then(|p| i64::try_from(p).ok()),
        "record_id": r.id.clone(),
        "reason_code": r.reason.code(),
        "reason": r.reason.to_string(),
        "first_seen": bson::DateTime::now(),
    };
    if let Reject::EmailTaken { other_id, .. } = &r.reason {
        // Both ids of an identity clash, for people and for scripts.
        d.insert("clashes_with_id", other_id.clone());
    }
    if let Some(rec) = &r.record {
        d.insert("record", rec.clone());
    }
    d
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::layout::Layout;

    fn candidate() -> (SourceSpec, Candidate) {
        let spec = Layout::builtin().sources.into_iter().find(|s| s.collection == "users").unwrap();
        let record = serde_json::json!({"id": "u1", "email": "a@example.com", "updatedAt": "2025-10-01T00:00:00.000Z"});
        let mapped = crate::mapping::map_record(&spec, "fp", &record).unwrap();
        (spec, Candidate::unhashed(mapped, "data/users.json", Some(0)))
    }

    /// Every update filter finds its document through `_id` and one clause per
    /// field: no top-level operator, which would make a planner (SecantusDB's)
    /// scan the collection for each single-record update.
    #[test]
    fn update_filters_are_id_plus_field_clauses() {
        let (spec, c) = candidate();
        let v = c.mapped.version.unwrap();
        for (held, clause) in [
            (Held::Unread, Bson::Document(doc! { "$lte": v })),
            (Held::Date(v), Bson::Document(doc! { "$lte": v })),
            (Held::Absent, Bson::Null),
            (Held::Other(Box::new(Bson::String("x".into()))), Bson::String("x".into())),
        ] {
            let f = update_filter(&spec, &c, &held, true);
            assert!(f.keys().all(|k| !k.starts_with('$')), "{held:?}: {f}");
            assert_eq!(f.get("_id"), Some(&Bson::String("u1".into())));
            assert_eq!(f.get("updatedAt"), Some(&clause), "{held:?}: {f}");
            assert_eq!(f.len(), 2, "{f}");
        }
        assert_eq!(update_filter(&spec, &c, &Held::Unread, false), doc! { "_id": "u1" });
    }
}
