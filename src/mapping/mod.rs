//! Mapping: one raw record becomes one BSON document, or a [`Reject`] that
//! says why it cannot. Pure functions, no I/O: everything here is unit-tested
//! without a server.

use std::fmt;

use bson::{Bson, Document};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::layout::SourceSpec;
use crate::source::json::{kind_of, FileProblem, DUPLICATE_KEYS_MARKER};

mod convert;
mod password;
mod reject;
mod size;
#[cfg(test)]
mod tests;

#[allow(unused_imports)]
use convert::*;
pub use convert::{comparable_version, parse_date, parse_date_in, to_bson};
#[allow(unused_imports)]
use password::*;
pub use password::{is_bcrypt, password_form, password_needs_hiding, PasswordForm};
#[allow(unused_imports)]
use reject::*;
pub use reject::{shown, sqlstate, sqlstate_code, Reject};
#[allow(unused_imports)]
use size::*;
pub use size::{document_size, stored_size_bound, value_size};

/// Bumped when the mapping rules change in a way that must rewrite documents.
pub const MAPPING_VERSION: &str = "docmirror-mapping-1";

/// A short hash of one source's mapping rules (this version of them, and the
/// layout's description of the source). It is mixed into each record's
/// content hash, so changing the rules rewrites the documents.
pub fn fingerprint(spec: &SourceSpec) -> String {
    let mut h = Sha256::new();
    h.update(MAPPING_VERSION.as_bytes());
    // Serializing a plain struct of strings cannot fail.
    h.update(serde_json::to_vec(spec).unwrap_or_default());
    hex(&h.finalize()[..8])
}

/// The bcrypt cost used for plaintext passwords (the platform's SALT_ROUNDS).
pub const BCRYPT_COST: u32 = 10;

/// A plaintext password on its way to bcrypt. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A record mapped to its document.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub id: String,
    /// `_id` first, then the record's fields in file order; no `_mirror`.
    /// When the record holds a plaintext password, the password field is
    /// absent here and [`Mapped::plaintext`] holds it until it is hashed.
    pub doc: Document,
    /// Content hash of the record and the mapping rules (plaintext passwords excluded).
    pub hash: String,
    /// The record's own version time, if the source has one.
    pub version: Option<bson::DateTime>,
    pub plaintext: Option<Secret>,
    password_field: Option<String>,
}

impl Mapped {
    /// The record's top-level field names: what the mirror owns in the document.
    /// (Derived from the document rather than stored: a backfill holds many.)
    pub fn fields(&self) -> Vec<String> {
        let mut out: Vec<String> = self.doc.keys().filter(|k| k.as_str() != "_id").cloned().collect();
        if let (Some(_), Some(pw)) = (&self.plaintext, &self.password_field) {
            if !out.contains(pw) {
                out.push(pw.clone());
            }
        }
        out
    }
}

/// MongoDB's largest document (`BSONObjMaxUserSize`): 16 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// Room kept below [`MAX_DOCUMENT_BYTES`] for what the writer adds to a mapped
/// document besides the `_mirror.fields` list, which is counted exactly: the
/// rest of `_mirror` (`source`, `hash`, `at` and the keys, under 200 bytes plus
/// the source path, which is at most 4 KiB) and the 60-character bcrypt hash
/// that replaces a plaintext password. 16 KiB leaves room to spare.
pub const BOOKKEEPING_ALLOWANCE: usize = 16 * 1024;

/// MongoDB's nesting limit for stored documents: the document is level 1 and
/// each non-empty object or array inside it one level more (empty ones do not
/// count, as on the server).
pub const MAX_NESTING: usize = 100;

pub use crate::layout::MIRROR_FIELD;

/// A stored copy of a rejected record larger than this (as BSON) is cut to the
/// start of its JSON text, so that the reject itself can always be stored.
pub const REJECT_COPY_MAX_BYTES: usize = 1024 * 1024;

/// How much of a name or value taken from a file a message shows.
const SHOWN_CHARS: usize = 120;

/// Map one record. `fingerprint` is [`fingerprint`] of `spec`.
pub fn map_record(spec: &SourceSpec, fingerprint: &str, value: &Value) -> Result<Mapped, Reject> {
    let Value::Object(obj) = value else {
        return Err(Reject::NotAnObject { found: kind_of(value) });
    };
    let id = identity(spec, obj)?;
    let zone = spec.naive_zone();
    let mut doc = Document::new();
    doc.insert("_id", id.clone());
    let mut plaintext = None;
    let mut version = None;
    let mut path: Vec<Seg<'_>> = Vec::new();
    for (key, v) in obj {
        check_key(key, &[])?;
        if key == "_id" {
            // The layout's id field is `_id` itself: already in place.
            continue;
        }
        if spec.password_field.as_deref() == Some(key.as_str()) {
            match password_kind(v) {
                Password::Keep => {}
                Password::Plain(p) => {
                    plaintext = Some(Secret(p.to_string()));
                    continue;
                }
                Password::Malformed("bcrypt") => return Err(Reject::MalformedBcrypt { field: key.clone() }),
                Password::Malformed(scheme) => return Err(Reject::MalformedHash { field: key.clone(), scheme }),
                Password::NotAString(found) => {
                    return Err(Reject::BadType { field: key.clone(), expected: "a string or null", found })
                }
            }
        }
        path.clear();
        path.push(Seg::Key(key));
        let b = if spec.dates.contains(key) {
            to_date(key, v, zone)?
        } else if spec.int64.contains(key) {
            to_int64(key, v)?
        } else if spec.documents.contains(key) {
            match v {
                Value::Object(_) | Value::Null => convert(v, &mut path, 1)?,
                other => {
                    return Err(Reject::BadType { field: key.clone(), expected: "an object", found: kind_of(other) })
                }
            }
        } else if spec.normalize_email.contains(key) {
            Bson::String(v.as_str().map(|s| s.trim().to_lowercase()).unwrap_or_default())
        } else {
            convert(v, &mut path, 1)?
        };
        if spec.version_field.as_deref() == Some(key.as_str()) {
            if let Bson::DateTime(d) = b {
                version = Some(d);
            }
        }
        doc.insert(key.clone(), b);
    }

    let hash = content_hash(fingerprint, obj, plaintext.is_some().then_some(spec.password_field.as_deref()).flatten());
    let m = Mapped { id, doc, hash, version, plaintext, password_field: spec.password_field.clone() };
    check_size(&m)?;
    Ok(m)
}

/// The record's id, once its identity checks pass: no duplicate keys, no
/// reserved field, a non-empty string id without NUL, the unique fields present.
fn identity(spec: &SourceSpec, obj: &Map<String, Value>) -> Result<String, Reject> {
    if let Some(Value::Array(keys)) = obj.get(DUPLICATE_KEYS_MARKER) {
        let keys: Vec<String> = keys.iter().filter_map(|k| k.as_str()).map(shown).collect();
        return Err(Reject::DuplicateKeys { keys: keys.join(", ") });
    }
    // Identity and bookkeeping are docmirror's: a record's own `_id` would
    // hijack the document's identity, its own `_mirror` would be overwritten.
    // (A layout may name `_id` itself as the id field: then it is the id.)
    for field in ["_id", MIRROR_FIELD] {
        if obj.contains_key(field) && (field != spec.id_field || field == MIRROR_FIELD) {
            return Err(Reject::ReservedField { field: field.to_string() });
        }
    }
    let id = match obj.get(&spec.id_field) {
        None => return Err(Reject::MissingId { field: spec.id_field.clone() }),
        Some(Value::String(s)) if s.is_empty() => return Err(Reject::EmptyId { field: spec.id_field.clone() }),
        Some(Value::String(s)) if s.contains('\0') => return Err(Reject::NulInId { field: spec.id_field.clone() }),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(Reject::IdNotString { field: spec.id_field.clone(), found: kind_of(other) }),
    };
    for field in &spec.normalize_email {
        if !matches!(obj.get(field), Some(Value::String(_))) {
            return Err(Reject::MissingEmail { field: field.clone() });
        }
    }
    Ok(id)
}

/// Hash of the record and the rules that map it. A plaintext password is left
/// out: a fast hash over it would make the password cheap to guess from
/// `_mirror.hash`; plaintext records are compared with bcrypt instead.
/// Recognised hashes and placeholders are not plaintext: they are hashed like
/// any other field.
pub fn content_hash(fingerprint: &str, obj: &Map<String, Value>, skip_field: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(fingerprint.as_bytes());
    h.update([0]);
    for (k, v) in obj {
        if Some(k.as_str()) == skip_field {
            h.update(b"\x01plaintext\x01");
            continue;
        }
        h.update(k.as_bytes());
        h.update([0]);
        // Serializing a `Value` to bytes cannot fail.
        h.update(serde_json::to_vec(v).unwrap_or_default());
        h.update([0]);
    }
    hex(&h.finalize()[..16])
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Replace a plaintext password by its bcrypt hash (CPU-heavy: call it on the
/// blocking pool).
pub fn hash_password(m: &mut Mapped, field: &str) -> Result<(), bcrypt::BcryptError> {
    if let Some(secret) = m.plaintext.take() {
        let hashed = bcrypt::hash(secret.expose(), BCRYPT_COST)?;
        m.doc.insert(field.to_string(), hashed);
    }
    Ok(())
}

/// The raw record as stored in `mirror_rejects`: plaintext passwords (and
/// anything malformed in the password field) hashed, nothing else changed.
/// A record MongoDB could not store as a document (a forbidden, empty or NUL
/// field name, too deep) is kept as its JSON text; one over
/// [`REJECT_COPY_MAX_BYTES`] as the start of its JSON text and its size, so
/// that the reject itself always fits.
pub fn reject_copy(spec: &SourceSpec, value: &Value) -> Bson {
    let mut v = value.clone();
    if let (Some(field), Value::Object(obj)) = (spec.password_field.as_deref(), &mut v) {
        if let Some(Value::String(p)) = obj.get(field) {
            if password_needs_hiding(p) {
                let replaced = bcrypt::hash(p, BCRYPT_COST).unwrap_or_else(|_| "<unhashable>".to_string());
                obj.insert(field.to_string(), Value::String(replaced));
            }
        }
    }
    // The copy sits one level down, in the reject's `record` field.
    let copy = match convert(&v, &mut Vec::new(), 1) {
        Ok(b) => b,
        Err(_) => Bson::String(serde_json::to_string(&v).unwrap_or_default()),
    };
    if value_size(&copy) <= REJECT_COPY_MAX_BYTES {
        return copy;
    }
    let text = serde_json::to_string(&v).unwrap_or_default();
    let head = match text.char_indices().nth(REJECT_COPY_HEAD_CHARS) {
        Some((i, _)) => &text[..i],
        None => text.as_str(),
    };
    Bson::Document(bson::doc! {
        "truncated": true,
        "json_bytes": i64::try_from(text.len()).unwrap_or(i64::MAX),
        "json_head": head,
    })
}

/// How much of an over-large rejected record's JSON text is kept.
const REJECT_COPY_HEAD_CHARS: usize = 4096;
