//! Mapping: one raw record becomes one BSON document, or a [`Reject`] that
//! says why it cannot. Pure functions, no I/O: everything here is unit-tested
//! without a server.

use std::fmt;

use bson::{Bson, Document};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::layout::SourceSpec;
use crate::source::{kind_of, FileProblem};

/// Bumped when the mapping rules change in a way that must rewrite documents.
pub const MAPPING_VERSION: &str = "docmirror-mapping-1";

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

/// The field docmirror keeps its bookkeeping in; a record may not have its own.
pub const MIRROR_FIELD: &str = "_mirror";

/// A stored copy of a rejected record larger than this (as BSON) is cut to the
/// start of its JSON text, so that the reject itself can always be stored.
pub const REJECT_COPY_MAX_BYTES: usize = 1024 * 1024;

/// How much of a name or value taken from a file a message shows.
const SHOWN_CHARS: usize = 120;

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
    /// The id holds a NUL character.
    NulInId {
        field: String,
    },
    /// The record has its own `_id` or `_mirror` field.
    ReservedField {
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
    /// A field name starting with `$` or holding a `.`. `key` is shown quoted,
    /// `within` is the path of the object holding it (empty at the top level).
    ForbiddenKey {
        key: String,
        within: String,
    },
    /// A field name holding a NUL character: BSON cannot encode it.
    NulInKey {
        key: String,
        within: String,
    },
    /// An empty field name: no MongoDB update can address it.
    EmptyKey {
        within: String,
    },
    /// Objects and arrays nested deeper than [`MAX_NESTING`].
    TooDeep {
        at: String,
    },
    /// The document would be over [`MAX_DOCUMENT_BYTES`] once written.
    TooLarge {
        bytes: usize,
        largest: String,
        largest_bytes: usize,
    },
    MalformedBcrypt {
        field: String,
    },
    /// Starts like a password hash of a known scheme (other than bcrypt) but is not one.
    MalformedHash {
        field: String,
        scheme: &'static str,
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
            Reject::NulInId { .. } => "nul_in_id",
            Reject::ReservedField { .. } => "reserved_field",
            Reject::BadDate { .. } => "bad_date",
            Reject::BadType { .. } => "bad_type",
            Reject::ForbiddenKey { .. } => "forbidden_key",
            Reject::NulInKey { .. } => "nul_in_key",
            Reject::EmptyKey { .. } => "empty_key",
            Reject::TooDeep { .. } => "too_deep",
            Reject::TooLarge { .. } => "document_too_large",
            Reject::MalformedBcrypt { .. } => "malformed_bcrypt",
            Reject::MalformedHash { .. } => "malformed_hash",
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

/// ` inside prefs.lora`, or nothing at the top level.
fn inside(within: &str) -> String {
    if within.is_empty() {
        String::new()
    } else {
        format!(" inside {within}")
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
            Reject::NulInId { field } => {
                write!(f, "id field {field:?} holds a NUL character (\\0), which an _id must not hold")
            }
            Reject::ReservedField { field } => write!(
                f,
                "the record has its own {field:?} field, which is reserved for docmirror's bookkeeping or identity; \
                 rename or remove it in the file"
            ),
            Reject::BadDate { field, value } => write!(f, "field {field:?} is not a date: {}", cut(value)),
            Reject::BadType { field, expected, found } => write!(f, "field {field:?} is {found}, expected {expected}"),
            Reject::ForbiddenKey { key, within } => write!(
                f,
                "field name {key}{} starts with '$' or contains '.', which MongoDB updates cannot address",
                inside(within)
            ),
            Reject::NulInKey { key, within } => write!(
                f,
                "field name {key}{} holds a NUL character (\\0), which BSON field names cannot hold",
                inside(within)
            ),
            Reject::EmptyKey { within } => {
                write!(f, "a field name{} is empty, which MongoDB updates cannot address", inside(within))
            }
            Reject::TooDeep { at } => write!(
                f,
                "objects and arrays nest more than {MAX_NESTING} levels deep at {at}, over MongoDB's nesting limit"
            ),
            Reject::TooLarge { bytes, largest, largest_bytes } => write!(
                f,
                "the document would be {bytes} bytes as BSON with docmirror's bookkeeping, over MongoDB's \
                 {MAX_DOCUMENT_BYTES}-byte (16 MiB) limit; its largest field is {largest} ({largest_bytes} bytes)"
            ),
            Reject::MalformedBcrypt { field } => {
                write!(f, "field {field:?} looks like a bcrypt hash but is malformed (expected $2a$/$2b$/$2y$, cost, 53 characters)")
            }
            Reject::MalformedHash { field, scheme } => write!(
                f,
                "field {field:?} starts like a {scheme} password hash but is malformed; it is neither kept as a hash \
                 nor hashed as a password"
            ),
            Reject::MissingEmail { field } => {
                write!(f, "field {field:?} is missing or not a string")
            }
            Reject::DuplicateId { id, first } => {
                write!(f, "duplicate id {}: already used by {first}, which is kept", shown(id))
            }
            Reject::DuplicateKeys { keys } => {
                write!(
                    f,
                    "the record names {} more than once (JavaScript would silently keep the last value)",
                    cut(keys)
                )
            }
            Reject::DuplicateEmail { email, first } => {
                write!(f, "duplicate email {}: already used by {first}, which is kept", shown(email))
            }
            Reject::EmailTaken { email, other_id } => {
                write!(
                    f,
                    "email {} is already held in MongoDB by another document (_id {})",
                    shown(email),
                    shown(other_id)
                )
            }
            Reject::IdTaken { id, detail } => {
                write!(f, "document {} could not be written: {detail}", shown(id))
            }
            Reject::File(p) => write!(f, "file {p}"),
            Reject::Unparsable(p) => write!(f, "record {p} (position within the record)"),
        }
    }
}

/// A name or value from a file, quoted (NUL and other control characters
/// escaped) and cut to a readable length: a reason must stay small enough to store.
pub fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS) {
        None => format!("{s:?}"),
        Some((i, _)) => format!("{:?}… ({} bytes)", &s[..i], s.len()),
    }
}

/// Text already quoted, cut to a readable length.
fn cut(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS * 2) {
        None => s.to_string(),
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
    }
}

/// One step of the path to a value inside a record.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// `params.lora[0]."a b"`: plain keys bare, others quoted; long paths cut.
fn render_path(path: &[Seg<'_>]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let plain = !k.is_empty()
                    && k.len() <= SHOWN_CHARS
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if plain {
                    out.push_str(k);
                } else {
                    out.push_str(&shown(k));
                }
            }
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
        if out.len() > SHOWN_CHARS * 3 {
            out.push('…');
            break;
        }
    }
    out
}

/// Map one record. `fingerprint` is [`crate::layout::Layout::fingerprint`] of `spec`.
pub fn map_record(spec: &SourceSpec, fingerprint: &str, value: &Value) -> Result<Mapped, Reject> {
    let Value::Object(obj) = value else {
        return Err(Reject::NotAnObject { found: kind_of(value) });
    };
    if let Some(Value::Array(keys)) = obj.get(crate::source::DUPLICATE_KEYS_MARKER) {
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
            to_date(key, v)?
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

/// The document as the writer will store it must fit in MongoDB's 16 MiB.
fn check_size(m: &Mapped) -> Result<(), Reject> {
    let (total, largest, largest_bytes) = measure(m);
    if total > MAX_DOCUMENT_BYTES {
        return Err(Reject::TooLarge { bytes: total, largest: shown(largest), largest_bytes });
    }
    Ok(())
}

/// An upper bound on the size of the document as the writer stores it: its
/// exact BSON size, the exact size of `_mirror.fields`, and
/// [`BOOKKEEPING_ALLOWANCE`] for the rest of `_mirror` and a password hash.
pub fn stored_size_bound(m: &Mapped) -> usize {
    measure(m).0
}

/// The bound, and the largest field with its size.
fn measure(m: &Mapped) -> (usize, &str, usize) {
    let mut largest = ("", 0usize);
    let mut bytes = 5usize;
    // `_mirror.fields`: one string per top-level field but `_id`.
    let mut fields = 5usize;
    let mut n = 0;
    for (k, v) in &m.doc {
        let element = element_size(k, v);
        bytes = bytes.saturating_add(element);
        if k != "_id" {
            if element > largest.1 {
                largest = (k.as_str(), element);
            }
            fields = fields.saturating_add(array_element_size(n, k.len() + 5));
            n += 1;
        }
    }
    if let (Some(_), Some(pw)) = (&m.plaintext, &m.password_field) {
        fields = fields.saturating_add(array_element_size(n, pw.len() + 5));
    }
    (bytes.saturating_add(fields).saturating_add(BOOKKEEPING_ALLOWANCE), largest.0, largest.1)
}

/// The size in bytes of a document as BSON (what `bson::to_vec` writes).
pub fn document_size(doc: &Document) -> usize {
    doc.iter().fold(5usize, |n, (k, v)| n.saturating_add(element_size(k, v)))
}

/// Type byte, key, NUL, value.
fn element_size(key: &str, v: &Bson) -> usize {
    value_size(v).saturating_add(key.len() + 2)
}

/// An array element: its key is its index in decimal.
fn array_element_size(index: usize, value: usize) -> usize {
    let mut digits = 1;
    let mut i = index;
    while i >= 10 {
        i /= 10;
        digits += 1;
    }
    value.saturating_add(digits + 2)
}

/// The size of a value as BSON, without its key.
pub fn value_size(v: &Bson) -> usize {
    match v {
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => 0,
        Bson::Boolean(_) => 1,
        Bson::Int32(_) => 4,
        Bson::Int64(_) | Bson::Double(_) | Bson::DateTime(_) | Bson::Timestamp(_) => 8,
        Bson::String(s) => s.len().saturating_add(5),
        Bson::Document(d) => document_size(d),
        Bson::Array(items) => items
            .iter()
            .enumerate()
            .fold(5usize, |n, (i, item)| n.saturating_add(array_element_size(i, value_size(item)))),
        // Types the mapping never produces: measure them by writing them.
        other => {
            let mut buf = Vec::new();
            let probe = bson::doc! { "v": other.clone() };
            match probe.to_writer(&mut buf) {
                // 4 (length) + 1 (type) + 2 ("v\0") + 1 (end).
                Ok(()) => buf.len().saturating_sub(8),
                Err(_) => usize::MAX,
            }
        }
    }
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

/// What a password field's string holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordForm {
    /// A hash in a format the platform may already hold (the scheme is named):
    /// stored as it is.
    Hash(&'static str),
    /// No usable password: `""`, `"!"`, `"*"`, blanks, or `!`/`*` before a
    /// recognised hash (a locked account). Stored as it is, never hashed: a
    /// bcrypt compare against it fails, so it can never become a login.
    Placeholder,
    /// A password: hashed with bcrypt before it is written.
    Plaintext,
    /// Starts like a hash of the named scheme but is not a well-formed one:
    /// most likely a damaged hash. Hashing it as a password would lock the
    /// user out; keeping it would store garbage. The record is rejected.
    Malformed(&'static str),
}

/// Classify a password field's string. See [`PasswordForm`].
pub fn password_form(s: &str) -> PasswordForm {
    if s.chars().all(|c| c == '!' || c == '*' || c.is_whitespace()) {
        return PasswordForm::Placeholder;
    }
    match hash_scheme(s) {
        Some(Ok(scheme)) => return PasswordForm::Hash(scheme),
        Some(Err(scheme)) => return PasswordForm::Malformed(scheme),
        None => {}
    }
    // `!` or `*` before a hash: a locked account, as /etc/shadow writes it.
    let unlocked = s.trim_start_matches(['!', '*']);
    if unlocked.len() < s.len() {
        match hash_scheme(unlocked) {
            Some(Ok(_)) => return PasswordForm::Placeholder,
            Some(Err(scheme)) => return PasswordForm::Malformed(scheme),
            None => {}
        }
    }
    PasswordForm::Plaintext
}

/// Whether a password field's string must not be stored or hashed quickly as
/// it is (plaintext, or something malformed that may be a password).
pub fn password_needs_hiding(s: &str) -> bool {
    matches!(password_form(s), PasswordForm::Plaintext | PasswordForm::Malformed(_))
}

/// `None`: no known hash prefix. `Some(Ok(scheme))`: a well-formed hash.
/// `Some(Err(scheme))`: the prefix of `scheme`, but malformed.
fn hash_scheme(s: &str) -> Option<Result<&'static str, &'static str>> {
    let check = |scheme: &'static str, ok: bool| Some(if ok { Ok(scheme) } else { Err(scheme) });
    let b = s.as_bytes();
    if s.starts_with("$2") && b.len() > 4 && b[3] == b'$' {
        return check("bcrypt", is_bcrypt(s));
    }
    for variant in ["$argon2id$", "$argon2i$", "$argon2d$"] {
        if let Some(rest) = s.strip_prefix(variant) {
            return check("Argon2", argon2_rest(rest));
        }
    }
    if let Some(rest) = s.strip_prefix("$scrypt$") {
        return check("scrypt", phc_rest(rest, &["ln", "r", "p"]));
    }
    if let Some(rest) = s.strip_prefix("$7$") {
        return check("scrypt", scrypt7_rest(rest));
    }
    for variant in ["$pbkdf2$", "$pbkdf2-sha1$", "$pbkdf2-sha256$", "$pbkdf2-sha512$"] {
        if let Some(rest) = s.strip_prefix(variant) {
            return check("PBKDF2", pbkdf2_rest(rest));
        }
    }
    if let Some(rest) = s.strip_prefix("$5$") {
        return check("SHA-256-crypt", sha_crypt_rest(rest, 43));
    }
    if let Some(rest) = s.strip_prefix("$6$") {
        return check("SHA-512-crypt", sha_crypt_rest(rest, 86));
    }
    // Django's formats: `<algorithm>$<fields>`.
    for variant in ["pbkdf2_sha256$", "pbkdf2_sha1$"] {
        if let Some(rest) = s.strip_prefix(variant) {
            return check("Django PBKDF2", django_pbkdf2_rest(rest));
        }
    }
    if let Some(rest) = s.strip_prefix("argon2$") {
        let ok = ["argon2id$", "argon2i$", "argon2d$"].iter().any(|v| rest.strip_prefix(v).is_some_and(argon2_rest));
        return check("Django Argon2", ok);
    }
    for variant in ["bcrypt_sha256$", "bcrypt$"] {
        if let Some(rest) = s.strip_prefix(variant) {
            return check("Django bcrypt", is_bcrypt(rest));
        }
    }
    if let Some(rest) = s.strip_prefix("scrypt$") {
        let p: Vec<&str> = rest.split('$').collect();
        let ok = p.len() == 5 && digits(p[0]) && !p[1].is_empty() && digits(p[2]) && digits(p[3]) && b64(p[4]);
        return check("Django scrypt", ok);
    }
    None
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 12 && s.bytes().all(|c| c.is_ascii_digit())
}

/// Base64 in any of the spellings hash formats use (standard, URL-safe,
/// passlib's `.` for `+`), padding allowed.
fn b64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && s.len() - body.len() <= 2
        && body.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'.' | b'-' | b'_'))
}

/// crypt(3)'s base64 alphabet: `./0-9A-Za-z`.
fn crypt64(s: &str) -> bool {
    s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'/')
}

/// PHC parameters `k=v,k=v` with each `required` key present and numeric.
fn phc_params(s: &str, required: &[&str]) -> bool {
    let mut seen = 0;
    for pair in s.split(',') {
        let Some((k, v)) = pair.split_once('=') else {
            return false;
        };
        if k.is_empty() || !k.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') || v.is_empty()
        {
            return false;
        }
        if required.contains(&k) {
            if !digits(v) {
                return false;
            }
            seen += 1;
        } else if !b64(v) {
            return false;
        }
    }
    seen == required.len()
}

/// `params$salt$hash`.
fn phc_rest(rest: &str, required: &[&str]) -> bool {
    let p: Vec<&str> = rest.split('$').collect();
    p.len() == 3 && phc_params(p[0], required) && b64(p[1]) && b64(p[2])
}

/// `[v=19$]m=..,t=..,p=..$salt$hash`.
fn argon2_rest(rest: &str) -> bool {
    let rest = match rest.split_once('$') {
        Some((v, after)) if v.starts_with("v=") => {
            if !digits(&v[2..]) {
                return false;
            }
            after
        }
        _ => rest,
    };
    phc_rest(rest, &["m", "t", "p"])
}

/// `$7$`: 11 characters of N, r, p, the salt, `$`, 43 characters of hash.
fn scrypt7_rest(rest: &str) -> bool {
    let Some((setting, hash)) = rest.split_once('$') else {
        return false;
    };
    setting.len() >= 11 && setting.is_char_boundary(11) && crypt64(&setting[..11]) && hash.len() == 43 && crypt64(hash)
}

/// passlib's `rounds$salt$hash` (or PHC `i=..[,l=..]$salt$hash`).
fn pbkdf2_rest(rest: &str) -> bool {
    let p: Vec<&str> = rest.split('$').collect();
    p.len() == 3 && (digits(p[0]) || phc_params(p[0], &["i"])) && b64(p[1]) && b64(p[2])
}

/// `[rounds=N$]salt$hash`, salt at most 16 characters.
fn sha_crypt_rest(rest: &str, hash_len: usize) -> bool {
    let rest = match rest.strip_prefix("rounds=") {
        Some(after) => match after.split_once('$') {
            Some((n, after)) if digits(n) => after,
            _ => return false,
        },
        None => rest,
    };
    let Some((salt, hash)) = rest.split_once('$') else {
        return false;
    };
    salt.chars().count() <= 16 && !salt.contains(['\0', '\n']) && hash.len() == hash_len && crypt64(hash)
}

/// Django: `iterations$salt$hash`.
fn django_pbkdf2_rest(rest: &str) -> bool {
    let p: Vec<&str> = rest.split('$').collect();
    p.len() == 3 && digits(p[0]) && !p[1].is_empty() && b64(p[2])
}

enum Password<'a> {
    /// A recognised hash, a placeholder or `null`: stored as the file has it.
    Keep,
    Plain(&'a str),
    Malformed(&'static str),
    NotAString(&'static str),
}

fn password_kind(v: &Value) -> Password<'_> {
    match v {
        Value::Null => Password::Keep,
        Value::String(s) => match password_form(s) {
            PasswordForm::Hash(_) | PasswordForm::Placeholder => Password::Keep,
            PasswordForm::Plaintext => Password::Plain(s),
            PasswordForm::Malformed(scheme) => Password::Malformed(scheme),
        },
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

/// A field name MongoDB can store and address. `within` is the path of the
/// object holding it.
fn check_key(key: &str, within: &[Seg<'_>]) -> Result<(), Reject> {
    if key == crate::source::DUPLICATE_KEYS_MARKER {
        return Err(Reject::DuplicateKeys { keys: format!("a key of the object at {}", render_path(within)) });
    }
    if key.contains('\0') {
        return Err(Reject::NulInKey { key: shown(key), within: render_path(within) });
    }
    if key.is_empty() {
        return Err(Reject::EmptyKey { within: render_path(within) });
    }
    if key.starts_with('$') || key.contains('.') {
        return Err(Reject::ForbiddenKey { key: shown(key), within: render_path(within) });
    }
    Ok(())
}

/// Convert JSON to BSON keeping number types: integers that fit 32 bits stay
/// Int32 (as the Node.js driver writes them), larger ones Int64, fractions Double.
/// Every field name is checked at every depth, and so is the nesting, taking
/// `v` as a whole document (level 1).
pub fn to_bson(v: &Value) -> Result<Bson, Reject> {
    convert(v, &mut Vec::new(), 0)
}

/// `level` is the nesting level of the object or array holding `v` (the
/// document is level 1); `path` leads to `v`.
fn convert<'a>(v: &'a Value, path: &mut Vec<Seg<'a>>, level: usize) -> Result<Bson, Reject> {
    let too_deep = |path: &[Seg<'_>]| Reject::TooDeep { at: render_path(path) };
    Ok(match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => number(n),
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => {
            if !items.is_empty() && level >= MAX_NESTING {
                return Err(too_deep(path));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                out.push(convert(item, path, level + 1)?);
                path.pop();
            }
            Bson::Array(out)
        }
        Value::Object(map) => {
            if !map.is_empty() && level >= MAX_NESTING {
                return Err(too_deep(path));
            }
            let mut d = Document::new();
            for (k, v) in map {
                check_key(k, path)?;
                path.push(Seg::Key(k));
                d.insert(k.clone(), convert(v, path, level + 1)?);
                path.pop();
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

    /// A record of `spec(i)` with its id and email, plus `extra` fields.
    fn rec(extra: Value) -> Value {
        let mut v = json!({"id":"u1","email":"a@b.c"});
        if let (Value::Object(o), Value::Object(e)) = (&mut v, extra) {
            o.extend(e);
        }
        v
    }

    fn reject(v: &Value) -> Reject {
        map_record(&spec(0), "fp", v).unwrap_err()
    }

    #[test]
    fn a_nul_in_a_field_name_is_rejected_at_any_depth_naming_the_field() {
        let top = reject(&rec(json!({"a\u{0}b": 1})));
        assert_eq!(top.code(), "nul_in_key");
        assert!(top.to_string().contains(r#""a\0b""#), "{top}");
        let nested = reject(&rec(json!({"prefs": {"ok": {"x\u{0}": true}}})));
        assert_eq!(nested.code(), "nul_in_key");
        assert!(nested.to_string().contains("inside prefs.ok"), "{nested}");
        let in_array = reject(&rec(json!({"tags": [1, {"\u{0}": 2}]})));
        assert_eq!(in_array.code(), "nul_in_key");
        assert!(in_array.to_string().contains("inside tags[1]"), "{in_array}");
        // A NUL in a value is fine: BSON strings are length-prefixed.
        let m = map_record(&spec(0), "fp", &rec(json!({"note": "a\u{0}b"}))).unwrap();
        assert_eq!(m.doc.get_str("note").unwrap(), "a\u{0}b");
        assert!(bson::to_vec(&m.doc).is_ok());
    }

    #[test]
    fn a_nul_in_the_id_is_rejected() {
        let r = reject(&json!({"id":"u\u{0}2","email":"a@b.c"}));
        assert_eq!(r.code(), "nul_in_id");
        assert!(r.to_string().contains("\"id\""), "{r}");
        let job = map_record(&spec(2), "fp", &json!({"job_id":"\u{0}"})).unwrap_err();
        assert_eq!(job.code(), "nul_in_id");
    }

    #[test]
    fn empty_field_names_are_rejected_at_any_depth() {
        assert_eq!(reject(&rec(json!({"": 1}))).code(), "empty_key");
        let nested = reject(&rec(json!({"prefs": {"": 1}})));
        assert_eq!(nested.code(), "empty_key");
        assert!(nested.to_string().contains("inside prefs"), "{nested}");
    }

    #[test]
    fn forbidden_keys_name_where_they_are() {
        let r = reject(&rec(json!({"prefs": {"lora": [{"a.b": 1}]}})));
        assert_eq!(r.code(), "forbidden_key");
        assert!(r.to_string().contains(r#""a.b" inside prefs.lora[0]"#), "{r}");
        let r = reject(&rec(json!({"$set": 1})));
        assert_eq!(
            r.to_string(),
            r#"field name "$set" starts with '$' or contains '.', which MongoDB updates cannot address"#
        );
    }

    #[test]
    fn identity_and_bookkeeping_fields_are_reserved() {
        for field in ["_id", "_mirror"] {
            let r = reject(&rec(json!({ field: "x" })));
            assert_eq!(r.code(), "reserved_field", "{field}");
            assert!(r.to_string().contains(&format!("{field:?}")), "{r}");
        }
        // Nested, they are ordinary field names.
        let m = map_record(&spec(0), "fp", &rec(json!({"prefs": {"_id": 1, "_mirror": 2}}))).unwrap();
        assert_eq!(m.doc.get_str("_id").unwrap(), "u1");
        // A layout whose id field is `_id` itself takes it as the id.
        let mut s = spec(1);
        s.id_field = "_id".into();
        let m = map_record(&s, "fp", &json!({"_id":"d1","size":1})).unwrap();
        assert_eq!(m.doc.get_str("_id").unwrap(), "d1");
        assert_eq!(m.fields(), ["size"]);
        assert_eq!(map_record(&s, "fp", &json!({"_id":"d1","_mirror":{}})).unwrap_err().code(), "reserved_field");
    }

    /// `{"a": {"a": ... {"a": leaf}}}`: `levels` objects around `leaf`.
    fn nested(levels: usize, leaf: Value) -> Value {
        let mut v = leaf;
        for _ in 0..levels {
            v = json!({ "a": v });
        }
        v
    }

    #[test]
    fn nesting_over_100_levels_is_rejected_as_mongodb_counts_it() {
        let s = spec(2);
        let job = |levels: usize, leaf: Value| {
            let mut v = nested(levels, leaf);
            v["job_id"] = json!("j");
            map_record(&s, "fp", &v)
        };
        assert!(job(100, json!(1)).is_ok());
        // Empty objects and arrays do not count (as on the server).
        assert!(job(100, json!({})).is_ok());
        assert!(job(100, json!([])).is_ok());
        let r = job(101, json!(1)).unwrap_err();
        assert_eq!(r.code(), "too_deep");
        assert!(r.to_string().starts_with("objects and arrays nest more than 100 levels deep at a.a.a."), "{r}");
        assert_eq!(job(100, json!([1])).unwrap_err().code(), "too_deep");
        // The same limit in `documents` fields (params).
        let deep = json!({"job_id": "j", "params": nested(100, json!(1))});
        assert_eq!(map_record(&s, "fp", &deep).unwrap_err().code(), "too_deep");
        assert!(to_bson(&nested(100, json!(1))).is_ok());
        assert_eq!(to_bson(&nested(101, json!(1))).unwrap_err().code(), "too_deep");
    }

    /// The document as the writer stores it (see `reconcile::insert_op`), with
    /// a source path as long as a path can be.
    fn as_written(m: &Mapped) -> Vec<u8> {
        let mut d = m.doc.clone();
        if let (Some(_), Some(f)) = (&m.plaintext, &m.password_field) {
            d.insert(f.clone(), HASH);
        }
        d.insert(
            "_mirror",
            bson::doc! {"source": "x".repeat(4096), "hash": &m.hash, "fields": m.fields(), "at": bson::DateTime::now()},
        );
        bson::to_vec(&d).unwrap()
    }

    #[test]
    fn documents_over_16_mib_with_bookkeeping_are_rejected_naming_the_largest_field() {
        let s = spec(0);
        let with_blob = |n: usize| rec(json!({"password": "plain-pw", "blob": "x".repeat(n), "n": 1}));
        // Find the largest blob that maps: it must be at most 16 MiB as written.
        let base = map_record(&s, "fp", &with_blob(0)).unwrap();
        assert!(as_written(&base).len() <= stored_size_bound(&base));
        let room = MAX_DOCUMENT_BYTES - stored_size_bound(&base);
        let fits = map_record(&s, "fp", &with_blob(room)).unwrap();
        assert_eq!(stored_size_bound(&fits), MAX_DOCUMENT_BYTES);
        assert!(as_written(&fits).len() <= MAX_DOCUMENT_BYTES, "{}", as_written(&fits).len());
        let r = map_record(&s, "fp", &with_blob(room + 1)).unwrap_err();
        assert_eq!(r.code(), "document_too_large");
        let msg = r.to_string();
        assert!(msg.contains(r#"its largest field is "blob""#) && msg.contains("16777216"), "{msg}");
        // Many small fields count too (each is also listed in `_mirror.fields`).
        let many: Map<String, Value> = (0..700_000).map(|i| (format!("f{i}"), Value::Null)).collect();
        let mut v = json!({"job_id": "j"});
        v.as_object_mut().unwrap().extend(many);
        assert_eq!(map_record(&spec(2), "fp", &v).unwrap_err().code(), "document_too_large");
    }

    #[test]
    fn document_size_is_what_bson_writes() {
        let rec = json!({"job_id":"j","s":"é\u{0}x","i":1,"l":5_000_000_000i64,"f":0.5,"b":true,"n":null,
            "params":{"a":[1,[2,{"c":"d"}],{}],"e":[]},"created_at":"2025-10-13T12:00:00Z",
            "list": (0..25).collect::<Vec<_>>()});
        let m = map_record(&spec(2), "fp", &rec).unwrap();
        assert_eq!(document_size(&m.doc), bson::to_vec(&m.doc).unwrap().len());
        let odd =
            bson::doc! {"r": bson::Regex { pattern: "a".into(), options: "i".into() }, "o": bson::oid::ObjectId::new()};
        assert_eq!(document_size(&odd), bson::to_vec(&odd).unwrap().len());
    }

    // Real hashes of each form (made with passlib, glibc crypt, Django, libsodium).
    const ARGON2ID: &str = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
    const ARGON2I: &str = "$argon2i$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA";
    const ARGON2D_OLD: &str = "$argon2d$m=4096,t=3,p=1$c29tZXNhbHQ$Z3Z3Z3Z3Z3Z3Z3Z3Z3Z3Zw";
    const SCRYPT_PHC: &str = "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E";
    const SCRYPT_7: &str = "$7$C6..../....SodiumChloride$kBGj9fHznVYFQMEn/qDCfrDevf9YDtcDdKvEqHJLV8D";
    const PBKDF2_SHA256: &str =
        "$pbkdf2-sha256$29000$9t7be09prfXee2/NOUeotQ$Y.RDnnq8vsezSZSKy1QNy6xhKPdoBIwc.0XDdRm9sJ8";
    const PBKDF2_SHA512: &str = "$pbkdf2-sha512$25000$LyWE0HrP2RsjZCxlDGFMKQ$1vC5Ohk2mCS9b6akqsEfgeb4l74SF8XjH.SljXf3dMLHdlY1GK9ojcCKts6/asR4aPqBmk74nCDddU3tvSCJvw";
    const PBKDF2_SHA1: &str = "$pbkdf2$131000$kZKzFgJgrBXCeA9hDEFoDQ$EtdTm3Zb3BtvlVN2Th/6zKd0DQg";
    const PBKDF2_PHC: &str = "$pbkdf2-sha256$i=10000,l=32$c29tZXNhbHQ$V0f0Rpaq8PLgBm7y8NcWHUdyoDtLgxNkTbRFjm3J5ss";
    const DJANGO: &str = "pbkdf2_sha256$260000$abcdefghijklmnopqrstuv$1ZAUFsJQFMLS4wdT9XUyqmHbA394+4a0q2JzR+XU5mE=";
    const SHA256_CRYPT: &str = "$5$saltstring$gpdvZHQ.qundoWJjAZwNzbBrhvpB73knRq.7HdH6Y9.";
    const SHA512_CRYPT: &str = "$6$rounds=5000$saltstring$.vnWcCATS7HX9wLGcWGmRWMy3QtkFQmcbgZ0JzwapmXyqGJ2Gt5UXnLK..eJGzeBsKnKBZB8CvweVE1t5sq6n.";

    #[test]
    fn recognised_hashes_are_kept_as_they_are_and_feed_the_content_hash() {
        let s = spec(0);
        let cases = [
            (HASH, "bcrypt"),
            ("$2a$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW", "bcrypt"),
            (ARGON2ID, "Argon2"),
            (ARGON2I, "Argon2"),
            (ARGON2D_OLD, "Argon2"),
            (SCRYPT_PHC, "scrypt"),
            (SCRYPT_7, "scrypt"),
            (PBKDF2_SHA256, "PBKDF2"),
            (PBKDF2_SHA512, "PBKDF2"),
            (PBKDF2_SHA1, "PBKDF2"),
            (PBKDF2_PHC, "PBKDF2"),
            (DJANGO, "Django PBKDF2"),
            ("argon2$argon2id$v=19$m=102400,t=2,p=8$c29tZXNhbHQ$Z3Z3Z3Z3Z3Z3Z3Z3Z3Z3Zw", "Django Argon2"),
            (SHA256_CRYPT, "SHA-256-crypt"),
            (SHA512_CRYPT, "SHA-512-crypt"),
        ];
        for (h, scheme) in cases {
            assert_eq!(password_form(h), PasswordForm::Hash(scheme), "{h}");
            assert!(!password_needs_hiding(h));
            let m = map_record(&s, "fp", &rec(json!({ "password": h }))).unwrap();
            assert_eq!(m.doc.get_str("password").unwrap(), h, "stored as it is");
            assert!(m.plaintext.is_none(), "{h} is not plaintext");
            // A hash is not plaintext: it feeds the content hash like any field.
            let mut other = h.to_string();
            other.pop();
            other.push(if h.ends_with('A') { 'B' } else { 'A' });
            let m2 = map_record(&s, "fp", &rec(json!({ "password": other }))).unwrap();
            assert_ne!(m.hash, m2.hash, "{h}");
            // And a rejected record keeps it as it is.
            let copy = reject_copy(&s, &json!({"id": 7, "password": h}));
            assert_eq!(copy.as_document().unwrap().get_str("password").unwrap(), h);
        }
    }

    #[test]
    fn placeholders_are_kept_as_no_usable_password_never_hashed() {
        let s = spec(0);
        for p in [
            json!(""),
            json!("!"),
            json!("*"),
            json!("!!"),
            json!("  "),
            json!(null),
            json!(format!("!{SHA512_CRYPT}")),
        ] {
            let m = map_record(&s, "fp", &rec(json!({ "password": p.clone() }))).unwrap();
            assert!(m.plaintext.is_none(), "{p} must not become a password");
            assert_eq!(m.doc.get("password"), Some(&to_bson(&p).unwrap()), "{p} is stored as the file has it");
            assert!(m.fields().contains(&"password".to_string()));
            if let Some(text) = p.as_str() {
                assert_eq!(password_form(text), PasswordForm::Placeholder);
                // bcrypt cannot verify anything against it: no login.
                assert!(bcrypt::verify("", text).is_err() || !bcrypt::verify("", text).unwrap_or(true));
            }
        }
        // A placeholder is not plaintext: changing it changes the content hash.
        let a = map_record(&s, "fp", &rec(json!({"password": ""}))).unwrap();
        let b = map_record(&s, "fp", &rec(json!({"password": "!"}))).unwrap();
        assert_ne!(a.hash, b.hash);
        // A password that merely starts with `!` is a password.
        assert_eq!(password_form("!Passw0rd"), PasswordForm::Plaintext);
        assert_eq!(password_form(" hunter22 "), PasswordForm::Plaintext);
    }

    #[test]
    fn malformed_hashes_are_rejected_not_hashed_again() {
        let s = spec(0);
        let cases = [
            ("$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ", "Argon2"),
            ("$argon2i$garbage", "Argon2"),
            ("$scrypt$ln=16,r=8$salt$hash", "scrypt"),
            ("$7$short$hash", "scrypt"),
            ("$pbkdf2-sha256$many$salt$hash", "PBKDF2"),
            ("$pbkdf2$131000$salt", "PBKDF2"),
            ("$5$salt$tooshort", "SHA-256-crypt"),
            ("$6$rounds=x$salt$hash", "SHA-512-crypt"),
            ("pbkdf2_sha256$abc$salt$hash", "Django PBKDF2"),
        ];
        for (h, scheme) in cases {
            assert_eq!(password_form(h), PasswordForm::Malformed(scheme), "{h}");
            assert!(password_needs_hiding(h));
            let r = reject(&rec(json!({ "password": h })));
            assert_eq!(r.code(), "malformed_hash", "{h}");
            assert!(r.to_string().contains(scheme) && r.to_string().contains("\"password\""), "{r}");
            // The stored reject copy hides it like a password.
            let copy = reject_copy(&s, &rec(json!({ "password": h })));
            assert!(is_bcrypt(copy.as_document().unwrap().get_str("password").unwrap()));
        }
        assert_eq!(reject(&rec(json!({"password": "$2b$10$short"}))).code(), "malformed_bcrypt");
        assert_eq!(reject(&rec(json!({"password": {"h": 1}}))).code(), "bad_type");
        // Anything else is a password.
        for p in ["hunter22", "$money$", "$1$abc", "pbkdf2", "argon2"] {
            assert_eq!(password_form(p), PasswordForm::Plaintext, "{p}");
        }
    }

    #[test]
    fn over_large_reject_copies_keep_their_start_and_size() {
        let s = spec(0);
        let big = json!({"id": "u", "password": "hunter22", "blob": "y".repeat(2 * REJECT_COPY_MAX_BYTES)});
        let copy = reject_copy(&s, &big);
        let d = copy.as_document().unwrap();
        assert_eq!(d.get_bool("truncated"), Ok(true));
        assert!(d.get_i64("json_bytes").unwrap() > 2_000_000);
        let head = d.get_str("json_head").unwrap();
        assert!(head.len() <= 4 * REJECT_COPY_HEAD_CHARS && head.starts_with(r#"{"id":"u","password":"$2b$10$"#));
        assert!(!copy.to_string().contains("hunter22"));
        // Records MongoDB could not store as documents are kept as JSON text.
        let nul = reject_copy(&s, &json!({"id":"u","a\u{0}b":1}));
        assert_eq!(nul, Bson::String(r#"{"id":"u","a\u0000b":1}"#.into()));
        let deep = reject_copy(&s, &nested(100, json!(1)));
        assert!(matches!(deep, Bson::String(_)), "the copy sits one level down: 100 levels are too many there");
        assert!(matches!(reject_copy(&s, &nested(99, json!(1))), Bson::Document(_)));
    }

    #[test]
    fn messages_show_long_names_cut_and_control_characters_escaped() {
        let long = "k".repeat(10_000);
        let r = reject(&rec(json!({ format!("${long}"): 1 })));
        assert!(r.to_string().len() < 500, "{}", r.to_string().len());
        assert!(r.to_string().contains("(10001 bytes)"));
        let r = reject(&rec(json!({"createdAt": "\u{0}".repeat(5000)})));
        assert!(r.to_string().len() < 1500);
        assert_eq!(shown("a\u{0}\n"), r#""a\0\n""#);
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
