//! Rejects: a record or file that cannot be mirrored, as stored in
//! `mirror_rejects`. Each has a stable key (collection, file, position,
//! reason and content), so a reject found again is not stored again, and a
//! reject that no longer holds is removed: the stored set is always the
//! current rejects of the files a reconcile read.

use bson::Bson;
use sha2::{Digest, Sha256};

use crate::layout::SourceSpec;
use crate::mapping::{self, Reject};
use crate::source::FileProblem;

/// A record or file that cannot be mirrored.
#[derive(Debug, Clone)]
pub struct RejectRecord {
    pub key: String,
    pub collection: String,
    pub rel: String,
    pub position: Option<usize>,
    pub id: Option<String>,
    pub reason: Reject,
    /// The record: its raw JSON until it is stored, then the stored copy
    /// (plaintext passwords hashed); `None` for files.
    pub record: Option<Bson>,
}

impl RejectRecord {
    pub fn locate(&self) -> String {
        match self.position {
            Some(p) => format!("{}[{p}]", self.rel),
            None => self.rel.clone(),
        }
    }
}

fn reject_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    mapping::hex(&h.finalize()[..12])
}

/// A record that parsed but could not be mapped, or lost a first-keeps-it check.
pub fn record_reject(
    spec: &SourceSpec,
    rel: &str,
    position: Option<usize>,
    id: Option<String>,
    reason: Reject,
    value: &serde_json::Value,
) -> RejectRecord {
    let content = match value {
        serde_json::Value::Object(obj) => {
            let skip = spec
                .password_field
                .as_deref()
                .filter(|f| obj.get(*f).and_then(|v| v.as_str()).is_some_and(mapping::password_needs_hiding));
            mapping::content_hash("", obj, skip)
        }
        other => mapping::hex(&Sha256::digest(other.to_string().as_bytes())[..12]),
    };
    let pos = position.map(|p| p.to_string()).unwrap_or_default();
    RejectRecord {
        key: reject_key(&[&spec.collection, rel, &pos, reason.code(), &content]),
        collection: spec.collection.clone(),
        rel: rel.to_string(),
        position,
        id,
        reason,
        // Filled in (with plaintext passwords hashed) only when it is stored.
        record: Some(Bson::String(value.to_string())),
    }
}

/// A record whose text does not parse on its own (nesting too deep).
pub fn unparsable_reject(
    spec: &SourceSpec,
    rel: &str,
    position: Option<usize>,
    text: &str,
    problem: FileProblem,
) -> RejectRecord {
    let reason = Reject::Unparsable(problem);
    let pos = position.map(|p| p.to_string()).unwrap_or_default();
    let content = format!("{:x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()));
    RejectRecord {
        key: reject_key(&[&spec.collection, rel, &pos, reason.code(), &content]),
        collection: spec.collection.clone(),
        rel: rel.to_string(),
        position,
        id: None,
        reason,
        record: None,
    }
}

/// A file that could not be read or parsed.
pub fn file_reject(spec: &SourceSpec, rel: &str, problem: FileProblem) -> RejectRecord {
    let detail = problem.to_string();
    RejectRecord {
        key: reject_key(&[&spec.collection, rel, "file", problem.code(), &detail]),
        collection: spec.collection.clone(),
        rel: rel.to_string(),
        position: None,
        id: None,
        reason: Reject::File(problem),
        record: None,
    }
}

/// A mapped record that could not be written.
pub fn mapped_reject(
    spec: &SourceSpec,
    rel: &str,
    position: Option<usize>,
    mapped: &mapping::Mapped,
    reason: Reject,
) -> RejectRecord {
    let pos = position.map(|p| p.to_string()).unwrap_or_default();
    RejectRecord {
        key: reject_key(&[&spec.collection, rel, &pos, reason.code(), &mapped.hash]),
        collection: spec.collection.clone(),
        rel: rel.to_string(),
        position,
        id: Some(mapped.id.clone()),
        reason,
        record: Some(Bson::Document(mapped.doc.clone())),
    }
}
