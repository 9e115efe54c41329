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

/// Why a record (or a whole file) cannot be mirrored.
#[derive(Debug, Clone, PartialEq)]
pub enum Reject {
    NotAnObject {
        found: &'static str,
    },
    MissingId {
        field: String,
    },
    IdNotString {
        field: String,
        found: &'static str,
    },
    EmptyId {
        field: String,
    },
    BadDate {
        field: String,
        value: String,
    },
    BadType {
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    ForbiddenKey {
        key: String,
    },
    MalformedBcrypt {
        field: String,
    },
    MissingEmail {
        field: String,
    },
    DuplicateId {
        id: String,
        first: String,
    },
    DuplicateKeys {
        keys: String,
    },
    DuplicateEmail {
        email: String,
        first: String,
    },
    EmailTaken {
        email: String,
        other_id: String,
    },
    IdTaken {
        id: String,
        detail: String,
    },
    File(FileProblem),
    /// One record of a file that the parser could not turn into a value.
    Unparsable(FileProblem),
}

impl Reject {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::NotAnObject { .. } => "not_an_object",
            Reject::MissingId { .. } => "missing_id",
            Reject::IdNotString { .. } => "id_not_string",
            Reject::EmptyId { .. } => "empty_id",
            Reject::BadDate { .. } => "bad_date",
            Reject::BadType { .. } => "bad_type",
            Reject::ForbiddenKey { .. } => "forbidden_key",
            Reject::MalformedBcrypt { .. } => "malformed_bcrypt",
            Reject::MissingEmail { .. } => "missing_email",
            Reject::DuplicateId { .. } => "duplicate_id",
            Reject::DuplicateKeys { .. } => "duplicate_key",
            Reject::DuplicateEmail { .. } => "duplicate_email",
            Reject::EmailTaken { .. } => "email_taken",
            Reject::IdTaken { .. } => "id_taken",
            Reject::File(p) | Reject::Unparsable(p) => p.code(),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::NotAnObject { found } => write!(f, "record is {found}, not an object"),
            Reject::MissingId { field } => write!(f, "no id: field {field:?} is missing"),
            Reject::IdNotString { field, found } => {
                write!(f, "id field {field:?} is {found}, not a string")
            }
            Reject::EmptyId { field } => write!(f, "id field {field:?} is an empty string"),
            Reject::BadDate { field, value } => write!(f, "field {field:?} is not a date: {value}"),
            Reject::BadType { field, expected, found } => write!(f, "field {field:?} is {found}, expected {expected}"),
            Reject::ForbiddenKey { key } => {
                write!(f, "field name {key:?} starts with '$' or contains '.', which MongoDB updates cannot address")
            }
            Reject::MalformedBcrypt { field } => {
                write!(f, "field {field:?} looks like a bcrypt hash but is malformed (expected $2a$/$2b$/$2y$, cost, 53 characters)")
            }
            Reject::MissingEmail { field } => {
                write!(f, "field {field:?} is missing or not a string")
            }
            Reject::DuplicateId { id, first } => {
                write!(f, "duplicate id {id:?}: already used by {first}, which is kept")
            }
            Reject::DuplicateKeys { keys } => {
                write!(f, "the record names {keys} more than once (JavaScript would silently keep the last value)")
            }
            Reject::DuplicateEmail { email, first } => {
                write!(f, "duplicate email {email:?}: already used by {first}, which is kept")
            }
            Reject::EmailTaken { email, other_id } => {
                write!(f, "email {email:?} is already held in MongoDB by another document (_id {other_id:?})")
            }
            Reject::IdTaken { id, detail } => {
                write!(f, "document {id:?} could not be written: {detail}")
            }
            Reject::File(p) => write!(f, "file {p}"),
            Reject::Unparsable(p) => write!(f, "record {p} (position within the record)"),
        }
    }
}

/// Map one record. `fingerprint` is [`fingerprint`] of `spec`.
pub fn map_record(spec: &SourceSpec, fingerprint: &str, value: &Value) -> Result<Mapped, Reject> {
    let Value::Object(obj) = value else {
        return Err(Reject::NotAnObject { found: kind_of(value) });
    };
    if let Some(Value::Array(keys)) = obj.get(DUPLICATE_KEYS_MARKER) {
        let keys: Vec<String> = keys.iter().filter_map(|k| k.as_str()).map(|k| format!("{k:?}")).collect();
        return Err(Reject::DuplicateKeys { keys: keys.join(", ") });
    }
    let id = match obj.get(&spec.id_field) {
        None => return Err(Reject::MissingId { field: spec.id_field.clone() }),
        Some(Value::String(s)) if s.is_empty() => return Err(Reject::EmptyId { field: spec.id_field.clone() }),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(Reject::IdNotString { field: spec.id_field.clone(), found: kind_of(other) }),
    };
    for field in &spec.normalize_email {
        if !matches!(obj.get(field), Some(Value::String(_))) {
            return Err(Reject::MissingEmail { field: field.clone() });
        }
    }

    let mut doc = Document::new();
    doc.insert("_id", id.clone());
    let mut plaintext = None;
    let mut version = None;
    for (key, v) in obj {
        check_key(key)?;
        if spec.password_field.as_deref() == Some(key.as_str()) {
            match password_kind(v) {
                Password::Hash => {}
                Password::Plain(p) => {
                    plaintext = Some(Secret(p.to_string()));
                    continue;
                }
                Password::Malformed => return Err(Reject::MalformedBcrypt { field: key.clone() }),
                Password::NotAString(found) => {
                    return Err(Reject::BadType { field: key.clone(), expected: "a string", found })
                }
            }
        }
        let b = if spec.dates.contains(key) {
            to_date(key, v)?
        } else if spec.int64.contains(key) {
            to_int64(key, v)?
        } else if spec.documents.contains(key) {
            match v {
                Value::Object(_) | Value::Null => to_bson(v)?,
                other => {
                    return Err(Reject::BadType { field: key.clone(), expected: "an object", found: kind_of(other) })
                }
            }
        } else if spec.normalize_email.contains(key) {
            Bson::String(v.as_str().map(|s| s.trim().to_lowercase()).unwrap_or_default())
        } else {
            to_bson(v)?
        };
        if spec.version_field.as_deref() == Some(key.as_str()) {
            if let Bson::DateTime(d) = b {
                version = Some(d);
            }
        }
        doc.insert(key.clone(), b);
    }

    let hash = content_hash(fingerprint, obj, plaintext.is_some().then_some(spec.password_field.as_deref()).flatten());
    Ok(Mapped { id, doc, hash, version, plaintext, password_field: spec.password_field.clone() })
}

/// Hash of the record and the rules that map it. A plaintext password is left
/// out: a fast hash over it would make the password cheap to guess from
/// `_mirror.hash`; plaintext records are compared with bcrypt instead.
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

enum Password<'a> {
    Hash,
    Plain(&'a str),
    Malformed,
    NotAString(&'static str),
}

fn password_kind(v: &Value) -> Password<'_> {
    match v {
        Value::String(s) if is_bcrypt(s) => Password::Hash,
        // Something that starts like a bcrypt hash but is not one is most
        // likely a damaged hash; hashing it as a password would lock the user out.
        Value::String(s) if s.starts_with("$2") && s.len() > 4 && s.as_bytes().get(3) == Some(&b'$') => {
            Password::Malformed
        }
        Value::String(s) => Password::Plain(s),
        other => Password::NotAString(kind_of(other)),
    }
}

/// `$2a$`, `$2b$` or `$2y$`, a two-digit cost, `$`, then 53 characters of bcrypt's base64.
pub fn is_bcrypt(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 60
        && b[0] == b'$'
        && b[1] == b'2'
        && matches!(b[2], b'a' | b'b' | b'y')
        && b[3] == b'$'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
        && b[7..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
}

fn check_key(key: &str) -> Result<(), Reject> {
    if key == DUPLICATE_KEYS_MARKER {
        return Err(Reject::DuplicateKeys { keys: "a key of a nested object".into() });
    }
    if key.starts_with('$') || key.contains('.') {
        return Err(Reject::ForbiddenKey { key: key.to_string() });
    }
    Ok(())
}

/// Convert JSON to BSON keeping number types: integers that fit 32 bits stay
/// Int32 (as the Node.js driver writes them), larger ones Int64, fractions Double.
pub fn to_bson(v: &Value) -> Result<Bson, Reject> {
    Ok(match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => number(n),
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(to_bson).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            let mut d = Document::new();
            for (k, v) in map {
                check_key(k)?;
                d.insert(k.clone(), to_bson(v)?);
            }
            Bson::Document(d)
        }
    })
}

fn number(n: &serde_json::Number) -> Bson {
    if let Some(i) = n.as_i64() {
        match i32::try_from(i) {
            Ok(small) => Bson::Int32(small),
            Err(_) => Bson::Int64(i),
        }
    } else {
        // u64 above i64::MAX, or a fraction: JavaScript holds both as doubles.
        Bson::Double(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn to_int64(field: &str, v: &Value) -> Result<Bson, Reject> {
    let bad = |found| Reject::BadType { field: field.to_string(), expected: "an integer", found };
    match v {
        Value::Null => Ok(Bson::Null),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(Bson::Int64(i));
            }
            match n.as_f64() {
                // Whole doubles within i64 range (JavaScript writes 5e9 as 5000000000).
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Ok(Bson::Int64(f64_to_i64(f))),
                _ => Err(bad("a number that is not a 64-bit integer")),
            }
        }
        other => Err(bad(kind_of(other))),
    }
}

/// Exact for whole values within +-9e18 (checked by the caller).
fn f64_to_i64(f: f64) -> i64 {
    // Formatting and parsing avoids a lossy `as` cast; the value is whole and in range.
    format!("{f:.0}").parse().unwrap_or(0)
}

fn to_date(field: &str, v: &Value) -> Result<Bson, Reject> {
    match v {
        Value::Null => Ok(Bson::Null),
        Value::String(s) => parse_date(s)
            .map(Bson::DateTime)
            .ok_or_else(|| Reject::BadDate { field: field.to_string(), value: format!("{s:?}") }),
        Value::Number(n) => n
            .as_i64()
            .map(|ms| Bson::DateTime(bson::DateTime::from_millis(ms)))
            .ok_or_else(|| Reject::BadDate { field: field.to_string(), value: n.to_string() }),
        other => Err(Reject::BadType { field: field.to_string(), expected: "a date string", found: kind_of(other) }),
    }
}

/// ISO-8601 / RFC 3339 with an offset (`2025-10-13T12:00:00.123Z`, what
/// JavaScript's `toISOString()` writes), or without one (Python's
/// `isoformat()`, read as UTC), or a bare date (midnight UTC). Sub-millisecond
/// digits are dropped: BSON dates hold milliseconds.
pub fn parse_date(s: &str) -> Option<bson::DateTime> {
    let s = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(bson::DateTime::from_millis(d.timestamp_millis()));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(bson::DateTime::from_millis(d.and_utc().timestamp_millis()));
        }
    }
    if let Ok(d) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(bson::DateTime::from_millis(d.timestamp_millis()));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| bson::DateTime::from_millis(d.and_utc().timestamp_millis()))
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

/// The raw record as stored in `mirror_rejects`: plaintext passwords hashed,
/// forbidden keys made harmless, nothing else changed.
pub fn reject_copy(spec: &SourceSpec, value: &Value) -> Bson {
    let mut v = value.clone();
    if let (Some(field), Value::Object(obj)) = (spec.password_field.as_deref(), &mut v) {
        if let Some(Value::String(p)) = obj.get(field) {
            if !is_bcrypt(p) {
                let replaced = bcrypt::hash(p, BCRYPT_COST).unwrap_or_else(|_| "<unhashable>".to_string());
                obj.insert(field.to_string(), Value::String(replaced));
            }
        }
    }
    let text = serde_json::to_string(&v).unwrap_or_default();
    match to_bson(&v) {
        Ok(b) => b,
        // Keys MongoDB cannot store as field names: keep the record as JSON text.
        Err(_) => Bson::String(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use serde_json::json;

    fn spec(i: usize) -> SourceSpec {
        Layout::builtin().sources[i].clone()
    }

    const HASH: &str = "$2b$10$J1JbpLNyErs2Vewf4LDN4u/Os0zWvTlg5el0sAu.ZUnk6lHagoW.u";

    #[test]
    fn users_map_with_dates_and_normalised_email() {
        let rec = json!({"id":"u1","email":"  Bob@Example.COM ","name":"Bob","password":HASH,"role":"user",
            "createdAt":"2025-10-13T12:00:00.000Z","updatedAt":"2025-10-13T12:30:00.250Z"});
        let m = map_record(&spec(0), "fp", &rec).unwrap();
        assert_eq!(m.id, "u1");
        assert_eq!(m.doc.get_str("_id").unwrap(), "u1");
        assert_eq!(m.doc.get_str("id").unwrap(), "u1");
        assert_eq!(m.doc.get_str("email").unwrap(), "bob@example.com");
        assert_eq!(m.doc.get_str("password").unwrap(), HASH);
        let created = m.doc.get_datetime("createdAt").unwrap();
        assert_eq!(created.timestamp_millis(), 1_760_356_800_000);
        assert_eq!(m.version.unwrap().timestamp_millis(), 1_760_358_600_250);
        assert!(m.plaintext.is_none());
        assert_eq!(m.fields(), ["id", "email", "name", "password", "role", "createdAt", "updatedAt"]);
    }

    #[test]
    fn plaintext_password_is_held_apart_and_out_of_the_hash() {
        let a = json!({"id":"u1","email":"a@x.io","password":"hunter22"});
        let b = json!({"id":"u1","email":"a@x.io","password":"other-pass"});
        let ma = map_record(&spec(0), "fp", &a).unwrap();
        let mb = map_record(&spec(0), "fp", &b).unwrap();
        assert!(ma.doc.get("password").is_none());
        assert_eq!(ma.plaintext.as_ref().unwrap().expose(), "hunter22");
        assert!(!format!("{ma:?}").contains("hunter22"));
        assert_eq!(ma.hash, mb.hash, "plaintext must not feed the content hash");
        let mut ma = ma;
        hash_password(&mut ma, "password").unwrap();
        let stored = ma.doc.get_str("password").unwrap();
        assert!(is_bcrypt(stored));
        assert!(bcrypt::verify("hunter22", stored).unwrap());
    }

    #[test]
    fn datasets_keep_size_as_int64_and_null_dates() {
        let rec = json!({"id":"d1","size":12,"uploaded_at":"2025-10-10T08:06:40Z","deleted_at":null,"type":"csv"});
        let m = map_record(&spec(1), "fp", &rec).unwrap();
        assert_eq!(m.doc.get("size"), Some(&Bson::Int64(12)));
        assert_eq!(m.doc.get("deleted_at"), Some(&Bson::Null));
        assert!(matches!(m.doc.get("uploaded_at"), Some(Bson::DateTime(_))));
        let big = json!({"id":"d1","size":5.0e9});
        assert_eq!(map_record(&spec(1), "fp", &big).unwrap().doc.get("size"), Some(&Bson::Int64(5_000_000_000)));
        let frac = json!({"id":"d1","size":1.5});
        assert_eq!(map_record(&spec(1), "fp", &frac).unwrap_err().code(), "bad_type");
    }

    #[test]
    fn jobs_keep_number_types_and_embed_params() {
        let rec = json!({"job_id":"j1","status":"running","progress":42.5,"epoch":2,"step":3_000_000_000u64,
            "loss":0.25,"params":{"lr":5e-5,"lora":{"r":8}},"pid":123,"created_at":"2025-10-11T12:00:00.123456",
            "completed_at":null});
        let m = map_record(&spec(2), "fp", &rec).unwrap();
        assert_eq!(m.id, "j1");
        assert_eq!(m.doc.get("progress"), Some(&Bson::Double(42.5)));
        assert_eq!(m.doc.get("epoch"), Some(&Bson::Int32(2)));
        assert_eq!(m.doc.get("step"), Some(&Bson::Int64(3_000_000_000)));
        let params = m.doc.get_document("params").unwrap();
        assert_eq!(params.get_document("lora").unwrap().get("r"), Some(&Bson::Int32(8)));
        // Python's naive isoformat() is read as UTC, microseconds cut to milliseconds.
        assert_eq!(m.doc.get_datetime("created_at").unwrap().timestamp_millis(), 1_760_184_000_123);
        let bad = json!({"job_id":"j1","params":"lr=1"});
        assert_eq!(map_record(&spec(2), "fp", &bad).unwrap_err().code(), "bad_type");
    }

    #[test]
    fn each_reject_reason() {
        let s = spec(0);
        let cases = [
            (json!(5), "not_an_object"),
            (json!({"email":"a@b.c"}), "missing_id"),
            (json!({"id":7,"email":"a@b.c"}), "id_not_string"),
            (json!({"id":null,"email":"a@b.c"}), "id_not_string"),
            (json!({"id":{"x":1},"email":"a@b.c"}), "id_not_string"),
            (json!({"id":"","email":"a@b.c"}), "empty_id"),
            (json!({"id":"u","email":"a@b.c","createdAt":"yesterday"}), "bad_date"),
            (json!({"id":"u","email":"a@b.c","createdAt":true}), "bad_type"),
            (json!({"id":"u","email":"a@b.c","$where":1}), "forbidden_key"),
            (json!({"id":"u","email":"a@b.c","prefs":{"a.b":1}}), "forbidden_key"),
            (json!({"id":"u","email":"a@b.c","password":"$2b$10$short"}), "malformed_bcrypt"),
            (json!({"id":"u","email":"a@b.c","password":12345}), "bad_type"),
            (json!({"id":"u"}), "missing_email"),
            (json!({"id":"u","email":null}), "missing_email"),
        ];
        for (rec, code) in cases {
            let err = map_record(&s, "fp", &rec).unwrap_err();
            assert_eq!(err.code(), code, "{rec}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn dates_in_the_shapes_the_platform_writes() {
        let ms = |s: &str| parse_date(s).map(|d| d.timestamp_millis());
        assert_eq!(ms("2025-10-13T12:00:00.000Z"), Some(1_760_356_800_000));
        assert_eq!(ms("2025-10-13T14:00:00+02:00"), Some(1_760_356_800_000));
        assert_eq!(ms("2025-10-13T12:00:00"), Some(1_760_356_800_000));
        assert_eq!(ms("2025-10-13 12:00:00.5"), Some(1_760_356_800_500));
        assert_eq!(ms("2025-10-13"), Some(1_760_313_600_000));
        assert_eq!(ms("13/10/2025"), None);
        assert_eq!(ms(""), None);
    }

    #[test]
    fn bcrypt_shapes() {
        assert!(is_bcrypt(HASH));
        assert!(is_bcrypt(&HASH.replace("$2b$", "$2y$")));
        assert!(!is_bcrypt(&HASH.replace("$2b$", "$2x$")));
        assert!(!is_bcrypt(&HASH[..59]));
        assert!(!is_bcrypt("plain-password"));
    }

    #[test]
    fn hash_changes_with_content_and_rules() {
        let a = json!({"id":"u","email":"a@b.c","name":"A"});
        let b = json!({"id":"u","email":"a@b.c","name":"B"});
        let s = spec(0);
        assert_ne!(map_record(&s, "fp", &a).unwrap().hash, map_record(&s, "fp", &b).unwrap().hash);
        assert_ne!(map_record(&s, "fp1", &a).unwrap().hash, map_record(&s, "fp2", &a).unwrap().hash);
        assert_eq!(map_record(&s, "fp", &a).unwrap().hash, map_record(&s, "fp", &a.clone()).unwrap().hash);
    }

    #[test]
    fn rejected_records_never_keep_plaintext() {
        let rec = json!({"id":7,"email":"a@b.c","password":"hunter22"});
        let copy = reject_copy(&spec(0), &rec);
        let pw = copy.as_document().unwrap().get_str("password").unwrap();
        assert!(is_bcrypt(pw));
        assert!(!copy.to_string().contains("hunter22"));
    }
}
