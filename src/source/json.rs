//! Pure JSON reading: a file's bytes split into records (strict: duplicate
//! keys are marked, not lost), and why a file could not be read. No I/O here,
//! so mapping can use it without depending on the file side of [`super`].

use serde_json::Value;

use crate::layout::Shape;

/// A record as found in a file, before mapping.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Index in the file's array; `None` for one-object-per-file sources.
    pub position: Option<usize>,
    pub value: Value,
}

impl RawRecord {
    /// `data/users.json[3]` or `artifacts/jobs/j1.json`.
    pub fn locate(&self, rel: &str) -> String {
        match self.position {
            Some(p) => format!("{rel}[{p}]"),
            None => rel.to_string(),
        }
    }
}

/// Why a whole file could not be read. Displayed after its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileProblem {
    #[error("cannot read: {0}")]
    Io(String),
    #[error("is {0}, not a regular file")]
    NotAFile(&'static str),
    #[error("is {size} bytes, over the {limit}-byte limit (--max-file-bytes)")]
    TooLarge { size: u64, limit: u64 },
    #[error("kept changing while being read; will be read again")]
    Unstable,
    #[error("is not valid UTF-8 (line {line}, column {column})")]
    Utf8 { line: usize, column: usize },
    #[error("is not valid JSON: {reason} (line {line}, column {column})")]
    Json { line: usize, column: usize, reason: String },
    #[error("holds {found} at the top level; expected {expected}")]
    Shape { expected: &'static str, found: &'static str },
}

impl FileProblem {
    /// A stable short code for `mirror_rejects.reason_code` and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            FileProblem::Io(_) => "file_unreadable",
            FileProblem::NotAFile(_) => "not_a_file",
            FileProblem::TooLarge { .. } => "file_too_large",
            FileProblem::Unstable => "file_unstable",
            FileProblem::Utf8 { .. } => "invalid_utf8",
            FileProblem::Json { .. } => "invalid_json",
            FileProblem::Shape { .. } => "wrong_top_level_type",
        }
    }
}

/// Parse a file's bytes into records.
pub fn parse(bytes: &[u8], shape: Shape) -> Result<Vec<RawRecord>, FileProblem> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_col(&bytes[..e.valid_up_to()]);
        FileProblem::Utf8 { line, column }
    })?;
    let Strict(value) = serde_json::from_str(text).map_err(|e| FileProblem::Json {
        line: e.line(),
        column: e.column(),
        reason: json_reason(&e),
    })?;
    match (shape, value) {
        (Shape::Array, Value::Array(items)) => {
            Ok(items.into_iter().enumerate().map(|(i, value)| RawRecord { position: Some(i), value }).collect())
        }
        (Shape::Object, v @ Value::Object(_)) => Ok(vec![RawRecord { position: None, value: v }]),
        (Shape::Array, other) => Err(FileProblem::Shape { expected: "an array of records", found: kind_of(&other) }),
        (Shape::Object, other) => {
            Err(FileProblem::Shape { expected: "one record (an object)", found: kind_of(&other) })
        }
    }
}

/// Split a file into its records' raw JSON texts without building values
/// (validation only). Errors are the same as [`parse`]'s.
pub fn parse_raw(bytes: &[u8], shape: Shape) -> Result<Vec<(Option<usize>, &str)>, FileProblem> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_col(&bytes[..e.valid_up_to()]);
        FileProblem::Utf8 { line, column }
    })?;
    let json_err =
        |e: serde_json::Error| FileProblem::Json { line: e.line(), column: e.column(), reason: json_reason(&e) };
    match shape {
        Shape::Array => {
            let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(text).map_err(|e| {
                if e.is_data() {
                    // Valid JSON of another shape: report it as `parse` does.
                    match serde_json::from_str::<Value>(text) {
                        Ok(v) => FileProblem::Shape { expected: "an array of records", found: kind_of(&v) },
                        Err(e) => json_err(e),
                    }
                } else {
                    json_err(e)
                }
            })?;
            Ok(items.into_iter().enumerate().map(|(i, r)| (Some(i), r.get())).collect())
        }
        Shape::Object => {
            let raw: &serde_json::value::RawValue = serde_json::from_str(text).map_err(json_err)?;
            if !raw.get().starts_with('{') {
                let v: Value = serde_json::from_str(raw.get()).map_err(json_err)?;
                return Err(FileProblem::Shape { expected: "one record (an object)", found: kind_of(&v) });
            }
            Ok(vec![(None, raw.get())])
        }
    }
}

/// One record's raw text as a value, duplicate keys marked. Fails where the
/// splitter did not look: nesting deeper than the parser's limit.
pub fn parse_value(text: &str) -> Result<Value, FileProblem> {
    serde_json::from_str::<Strict>(text).map(|Strict(v)| v).map_err(|e| FileProblem::Json {
        line: e.line(),
        column: e.column(),
        reason: json_reason(&e),
    })
}

/// Marks an object in which a key appeared more than once. JavaScript's
/// `JSON.parse` silently keeps the last value; the mirror rejects the record
/// instead (naming the keys), and the rest of the file still arrives. A real
/// key of this name could never be mirrored anyway (it starts with `$`).
pub const DUPLICATE_KEYS_MARKER: &str = "$docmirror.duplicate_keys";

/// A JSON value like serde_json's, but duplicate keys are recorded, not lost.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        serde::Deserialize::deserialize(d).map(|Strict(v)| v)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // Room for a typical record's fields from the start: growing a map
        // entry by entry copies it several times (JSON gives no size hint).
        let mut obj = serde_json::Map::with_capacity(map.size_hint().unwrap_or(8));
        let mut duplicates: Vec<Value> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            match obj.entry(key) {
                serde_json::map::Entry::Vacant(e) => {
                    e.insert(v);
                }
                serde_json::map::Entry::Occupied(mut e) => {
                    duplicates.push(Value::String(e.key().clone()));
                    e.insert(v);
                }
            }
        }
        if !duplicates.is_empty() {
            obj.insert(DUPLICATE_KEYS_MARKER.to_string(), Value::Array(duplicates));
        }
        Ok(Value::Object(obj))
    }
}

/// serde_json's message without its trailing " at line L column C".
pub(crate) fn json_reason(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn line_col(prefix: &[u8]) -> (usize, usize) {
    let line = prefix.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = prefix.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

/// A JSON value's kind, for messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arrays_and_objects() {
        let r = parse(br#"[{"id":"a"},{"id":"b"}]"#, Shape::Array).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].position, Some(1));
        let r = parse(br#"{"job_id":"j"}"#, Shape::Object).unwrap();
        assert_eq!(r[0].position, None);
    }

    #[test]
    fn bad_json_names_line_and_column() {
        let err = parse(b"[\n  {\"id\": \"a\",\n  }\n]", Shape::Array).unwrap_err();
        match err {
            FileProblem::Json { line, column, .. } => assert_eq!((line, column), (3, 3)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(parse(b"[{\"a\":1}", Shape::Array), Err(FileProblem::Json { .. })));
        assert!(matches!(parse(b"[NaN]", Shape::Array), Err(FileProblem::Json { .. })));
    }

    #[test]
    fn bom_is_accepted_and_invalid_utf8_is_located() {
        assert_eq!(parse(b"\xEF\xBB\xBF[]", Shape::Array).unwrap().len(), 0);
        let err = parse(b"[\n\"a\xFF\"]", Shape::Array).unwrap_err();
        assert_eq!(err, FileProblem::Utf8 { line: 2, column: 3 });
    }

    #[test]
    fn duplicate_keys_are_marked_not_lost() {
        let r = parse(br#"[{"id":"a","x":1,"x":2},{"id":"b"}]"#, Shape::Array).unwrap();
        assert_eq!(r[0].value[DUPLICATE_KEYS_MARKER], serde_json::json!(["x"]));
        assert!(r[1].value.get(DUPLICATE_KEYS_MARKER).is_none());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(parse(deep.as_bytes(), Shape::Array), Err(FileProblem::Json { .. })));
    }

    #[test]
    fn wrong_top_level_type_is_named() {
        let err = parse(b"{}", Shape::Array).unwrap_err();
        assert_eq!(err.to_string(), "holds an object at the top level; expected an array of records");
        assert!(matches!(parse(b"[]", Shape::Object), Err(FileProblem::Shape { .. })));
    }
}
