//! Why a record cannot be mirrored: [`Reject`], its stable code and its
//! message, which names the field and where it sits in the record.

#[allow(unused_imports)]
use super::*;

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
    /// The server refused the write of this one document (its code says why).
    Refused {
        id: String,
        code: i32,
        detail: String,
    },
    /// Another writer kept changing the document while docmirror wrote it.
    Contended {
        id: String,
    },
    /// The target's version of the document is not a time the file's can be
    /// compared with, so newer-wins cannot say which is newer.
    VersionUncomparable {
        field: String,
        found: String,
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
            Reject::Refused { code, .. } => refused_code(*code),
            Reject::Contended { .. } => "write_contended",
            Reject::VersionUncomparable { .. } => "version_uncomparable",
            Reject::File(p) | Reject::Unparsable(p) => p.code(),
        }
    }
}

/// ` inside prefs.lora`, or nothing at the top level.
pub(super) fn inside(within: &str) -> String {
    if within.is_empty() {
        String::new()
    } else {
        format!(" inside {within}")
    }
}

impl fmt::Display for Reject {
    // Long: one arm per kind of reject, each a sentence; splitting it would only scatter them.
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
                    "email {} is already held in the database by another record (id {})",
                    shown(email),
                    shown(other_id)
                )
            }
            Reject::Refused { id, code, detail } => match sqlstate(*code) {
                Some(state) => {
                    write!(f, "PostgreSQL refused row {} (SQLSTATE {state}): {}", shown(id), cut(detail))
                }
                None => write!(f, "MongoDB refused document {} (error {code}): {}", shown(id), cut(detail)),
            },
            Reject::VersionUncomparable { field, found } => write!(
                f,
                "the document in MongoDB holds {field} = {} , which is not a time; newer-wins cannot tell which \
                 version is newer, so it is not overwritten (fix the field in MongoDB, or use --conflict file-wins)",
                cut(found)
            ),
            Reject::Contended { id } => write!(
                f,
                "another writer kept changing document {} while it was written; it is tried again on the next run",
                shown(id)
            ),
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
pub(super) fn cut(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS * 2) {
        None => s.to_string(),
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
    }
}

/// One step of the path to a value inside a record.
#[derive(Clone, Copy)]
pub(super) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// `params.lora[0]."a b"`: plain keys bare, others quoted; long paths cut.
pub(super) fn render_path(path: &[Seg<'_>]) -> String {
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

/// The reason code for a write the server refused, by its error code.
pub(super) fn refused_code(code: i32) -> &'static str {
    if let Some(state) = sqlstate(code) {
        return match state.as_str() {
            "23502" => "not_null_missing",
            "23503" => "missing_parent",
            "23505" => "duplicate_key",
            "22001" => "value_too_long",
            "22003" => "number_out_of_range",
            "22P02" | "22007" | "22008" => "bad_value",
            "42804" => "bad_type",
            "22021" => "bad_text",
            _ => "write_refused",
        };
    }
    match code {
        // DocumentValidationFailure: a `$jsonSchema` validator on the collection.
        121 => "validation_failed",
        // BSONObjectTooLarge, and the size errors of inserts and updates.
        10334 | 17419 | 17420 => "document_too_large",
        // DuplicateKey on an index docmirror did not expect to clash.
        11000 => "duplicate_key",
        _ => "write_refused",
    }
}

/// PostgreSQL's five-character SQLSTATEs travel in a refusal's `code` as
/// this base plus the SQLSTATE read in base 36 (MongoDB's codes are far below).
const SQLSTATE_BASE: i32 = 1_000_000_000;

/// A SQLSTATE (`23503`) as a refusal code (see [`SQLSTATE_BASE`]).
pub fn sqlstate_code(state: &str) -> i32 {
    let n = state.chars().take(5).try_fold(0i32, |n, c| Some(n * 36 + i32::try_from(c.to_digit(36)?).ok()?));
    n.map_or(SQLSTATE_BASE, |n| SQLSTATE_BASE + n)
}

/// The SQLSTATE a refusal code carries, if it carries one.
pub fn sqlstate(code: i32) -> Option<String> {
    let mut n = code.checked_sub(SQLSTATE_BASE).filter(|n| (0..36i32.pow(5)).contains(n))?;
    let mut out = ['0'; 5];
    for slot in out.iter_mut().rev() {
        *slot = char::from_digit(u32::try_from(n % 36).ok()?, 36)?.to_ascii_uppercase();
        n /= 36;
    }
    Some(out.iter().collect())
}
