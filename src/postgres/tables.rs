//! The guide's tables as docmirror sees them: which record field fills which
//! column, checked and turned into text that PostgreSQL casts to the
//! column's type (so PostgreSQL itself judges lengths, ranges and precision),
//! and the way back, a row as the document [`crate::verify`] compares.
//!
//! A column takes the record field of the same name (`created_at`) or its
//! camelCase form (`createdAt`); `id` takes the record's id (`job_id` for
//! jobs). Fields with no column are the row's extras, kept in
//! `docmirror_rows.extras`. A missing or null field is written as NULL, as
//! the guide's own script does. Times are written as UTC wall time into the
//! guide's `TIMESTAMP` (without time zone) columns.

use bson::{Bson, Document};
use serde_json::{Map, Value};

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `VARCHAR(n)` or `TEXT`.
    Text,
    BigInt,
    Int,
    /// `DECIMAL(p, s)`: its scale.
    Numeric(u32),
    Jsonb,
    Timestamp,
}

impl Kind {
    /// The SQL cast applied to the text sent for the column.
    pub fn cast(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::BigInt => "bigint",
            Kind::Int => "integer",
            Kind::Numeric(_) => "numeric",
            Kind::Jsonb => "jsonb",
            Kind::Timestamp => "timestamp",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// As the guide declares it (for messages).
    pub sql: &'static str,
}

const fn col(name: &'static str, kind: Kind, sql: &'static str) -> Column {
    Column { name, kind, sql }
}

/// One of the guide's tables that docmirror fills.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    /// `columns[0]` is `id`.
    pub columns: &'static [Column],
    /// The column of the version time (newer-wins), if any.
    pub version: Option<&'static str>,
}

pub const USERS: Table = Table {
    name: "users",
    columns: &[
        col("id", Kind::Text, "VARCHAR(255)"),
        col("email", Kind::Text, "VARCHAR(255)"),
        col("name", Kind::Text, "VARCHAR(255)"),
        col("password", Kind::Text, "VARCHAR(255)"),
        col("role", Kind::Text, "VARCHAR(50)"),
        col("created_at", Kind::Timestamp, "TIMESTAMP"),
        col("updated_at", Kind::Timestamp, "TIMESTAMP"),
    ],
    version: Some("updated_at"),
};

pub const DATASETS: Table = Table {
    name: "datasets",
    columns: &[
        col("id", Kind::Text, "VARCHAR(255)"),
        col("name", Kind::Text, "VARCHAR(255)"),
        col("filename", Kind::Text, "VARCHAR(255)"),
        col("path", Kind::Text, "TEXT"),
        col("size", Kind::BigInt, "BIGINT"),
        col("type", Kind::Text, "VARCHAR(50)"),
        col("uploaded_by", Kind::Text, "VARCHAR(255)"),
        col("uploaded_at", Kind::Timestamp, "TIMESTAMP"),
        col("deleted_at", Kind::Timestamp, "TIMESTAMP"),
    ],
    version: None,
};

pub const TRAINING_JOBS: Table = Table {
    name: "training_jobs",
    columns: &[
        col("id", Kind::Text, "VARCHAR(255)"),
        col("job_id", Kind::Text, "VARCHAR(255)"),
        col("user_id", Kind::Text, "VARCHAR(255)"),
        col("dataset_id", Kind::Text, "VARCHAR(255)"),
        col("status", Kind::Text, "VARCHAR(50)"),
        col("progress", Kind::Numeric(2), "DECIMAL(5,2)"),
        col("epoch", Kind::Int, "INTEGER"),
        col("step", Kind::Int, "INTEGER"),
        col("total_steps", Kind::Int, "INTEGER"),
        col("loss", Kind::Numeric(6), "DECIMAL(10,6)"),
        col("message", Kind::Text, "TEXT"),
        col("params", Kind::Jsonb, "JSONB"),
        col("pid", Kind::Int, "INTEGER"),
        col("created_at", Kind::Timestamp, "TIMESTAMP"),
        col("updated_at", Kind::Timestamp, "TIMESTAMP"),
        col("completed_at", Kind::Timestamp, "TIMESTAMP"),
    ],
    version: Some("updated_at"),
};

/// The tables, in the order their foreign keys need them loaded.
pub const TABLES: [&Table; 3] = [&USERS, &DATASETS, &TRAINING_JOBS];

/// The table a layout's collection is mirrored into.
pub fn table(collection: &str) -> Option<&'static Table> {
    TABLES.iter().copied().find(|t| t.name == collection)
}

/// `created_at` → `createdAt`.
pub fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for ch in snake.chars() {
        if ch == '_' {
            upper = true;
        } else if upper {
            out.extend(ch.to_uppercase());
            upper = false;
        } else {
            out.push(ch);
        }
    }
    out
}

/// A record as one row: text per column (None: NULL), and the extras.
#[derive(Debug, Clone)]
pub struct Row {
    pub values: Vec<Option<String>>,
    pub extras: Map<String, Value>,
}

/// The record field a column takes in `doc`, if the record has it.
fn field_for<'d>(doc: &'d Document, column: &str) -> Option<(&'d str, &'d Bson)> {
    doc.iter()
        .find(|(k, _)| k.as_str() == column)
        .or_else(|| doc.iter().find(|(k, _)| is_camel(k, column)))
        .map(|(k, v)| (k.as_str(), v))
}

/// Whether `k` is [`camel`]`(snake)`, without making it (the guide's column
/// names are ASCII; this runs for every column of every row).
fn is_camel(k: &str, snake: &str) -> bool {
    let mut got = k.bytes();
    let mut upper = false;
    for b in snake.bytes() {
        if b == b'_' {
            upper = true;
            continue;
        }
        let want = if upper { b.to_ascii_uppercase() } else { b };
        upper = false;
        if got.next() != Some(want) {
            return false;
        }
    }
    got.next().is_none()
}

/// Which columns an update sets: those whose field the record has, and
/// those whose field the mirror wrote before (`owned`) and the record lost;
/// one `1` or `0` per column.
pub fn set_mask(table: &Table, doc: &Document, owned: &[String]) -> String {
    table
        .columns
        .iter()
        .map(|c| {
            let mine = c.name == "id"
                || field_for(doc, c.name).is_some()
                || owned.iter().any(|f| *f == c.name || *f == camel(c.name));
            if mine {
                '1'
            } else {
                '0'
            }
        })
        .collect()
}

/// A mapped record (with its password already hashed) as a row of `table`;
/// `Err` says why it cannot be one (a value of the wrong kind for its column).
pub fn to_row(table: &Table, id_field: &str, doc: &Document) -> Result<Row, String> {
    let mut values = Vec::with_capacity(table.columns.len());
    let mut used: Vec<&str> = vec!["_id", id_field];
    let mut extras = Map::new();
    let mut json_texts = Map::new();
    for c in table.columns {
        if c.name == "id" {
            values.push(doc.get_str("_id").ok().map(str::to_string));
            continue;
        }
        let Some((field, v)) = field_for(doc, c.name) else {
            values.push(None);
            continue;
        };
        used.push(field);
        let text = column_text(c, v).map_err(|found| {
            format!("field `{field}` holds {found}, which column {}.{} ({}) cannot hold", table.name, c.name, c.sql)
        })?;
        if let (Kind::Numeric(scale), Some(t)) = (c.kind, &text) {
            if decimals(t) > scale {
                // PostgreSQL rounds to the column's scale: the exact number is kept too.
                extras.insert(field.to_string(), json_of(v));
            }
        }
        if let (Kind::Jsonb, Some(t)) = (c.kind, &text) {
            // jsonb keeps no key order: the text is kept too, so the record reads back as written.
            if t.contains('{') {
                json_texts.insert(field.to_string(), Value::String(t.clone()));
            }
        }
        values.push(text);
    }
    for (k, v) in doc {
        if !used.contains(&k.as_str()) {
            extras.insert(k.clone(), json_of(v));
        }
    }
    if !json_texts.is_empty() {
        // Under `_mirror`, a name no record may use.
        let mut own = Map::new();
        own.insert(JSON_TEXT.into(), Value::Object(json_texts));
        extras.insert(crate::layout::MIRROR_FIELD.into(), Value::Object(own));
    }
    Ok(Row { values, extras })
}

/// Where the extras keep the text of `jsonb` values (with its key order).
const JSON_TEXT: &str = "json_text";

/// Digits after the decimal point of a number written by [`column_text`].
fn decimals(t: &str) -> u32 {
    t.split_once('.').map_or(0, |(_, f)| u32::try_from(f.len()).unwrap_or(u32::MAX))
}

/// A value as the text PostgreSQL casts to the column's type; `Err` names
/// what the value is when no cast would be right.
fn column_text(c: &Column, v: &Bson) -> Result<Option<String>, &'static str> {
    if matches!(v, Bson::Null) {
        return Ok(None);
    }
    let text = match (c.kind, v) {
        (Kind::Text, Bson::String(s)) => s.clone(),
        (Kind::BigInt | Kind::Int, Bson::Int32(i)) => i.to_string(),
        (Kind::BigInt | Kind::Int, Bson::Int64(i)) => i.to_string(),
        (Kind::BigInt | Kind::Int, Bson::Double(f)) if f.fract() == 0.0 && f.abs() < 9.0e18 => format!("{f:.0}"),
        (Kind::BigInt | Kind::Int, Bson::Double(_)) => return Err("a number with a fraction"),
        (Kind::Numeric(_), Bson::Int32(i)) => i.to_string(),
        (Kind::Numeric(_), Bson::Int64(i)) => i.to_string(),
        (Kind::Numeric(_), Bson::Double(f)) if f.is_finite() => plain_decimal(*f),
        (Kind::Jsonb, other) => json_of(other).to_string(),
        (Kind::Timestamp, Bson::DateTime(d)) => utc_wall_time(*d).ok_or("a time out of range")?,
        (_, other) => return Err(kind_name(other)),
    };
    Ok(Some(text))
}

/// A double as a plain decimal (no exponent), with the shortest digits that
/// read back as the same double.
fn plain_decimal(f: f64) -> String {
    let s = f.to_string();
    if !s.contains(['e', 'E']) {
        return s;
    }
    // Rust's Display never uses exponents for f64, but be safe.
    format!("{f:.12}").trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A BSON date as `YYYY-MM-DD HH:MM:SS.mmm`, its UTC wall time.
/// (Written by hand for the years 0 to 9999: chrono's `format` parses its
/// pattern again for every value, a cost paid for every time of every row.)
pub fn utc_wall_time(d: bson::DateTime) -> Option<String> {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(d.timestamp_millis())?.naive_utc();
    if !(0..=9999).contains(&t.year()) {
        return Some(t.format("%Y-%m-%d %H:%M:%S%.3f").to_string());
    }
    let mut s = String::with_capacity(23);
    let millis = t.nanosecond() / 1_000_000;
    let (y, mo, da, h, mi, se) = (t.year(), t.month(), t.day(), t.hour(), t.minute(), t.second());
    write!(s, "{y:04}-{mo:02}-{da:02} {h:02}:{mi:02}:{se:02}.{millis:03}").ok()?;
    Some(s)
}

fn kind_name(b: &Bson) -> &'static str {
    match b {
        Bson::String(_) => "a string",
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => "a number",
        Bson::Boolean(_) => "a boolean",
        Bson::Array(_) => "an array",
        Bson::Document(_) => "an object",
        Bson::DateTime(_) => "a time",
        _ => "a value of another kind",
    }
}

/// A BSON value as plain JSON (numbers as numbers, times as ISO strings).
pub fn json_of(b: &Bson) -> Value {
    match b {
        Bson::DateTime(d) => d.try_to_rfc3339_string().map(Value::String).unwrap_or(Value::Null),
        Bson::Document(d) => Value::Object(d.iter().map(|(k, v)| (k.clone(), json_of(v))).collect()),
        Bson::Array(a) => Value::Array(a.iter().map(json_of).collect()),
        other => other.clone().into_relaxed_extjson(),
    }
}

/// A row read back (as `to_jsonb(row)`), with its bookkeeping, as the
/// document the record mapped to: what verify compares and export writes.
/// `known` are the field names the layout gives the source (its dates,
/// version, email and password fields): a row the app wrote itself has no
/// bookkeeping, and takes the camelCase name of a column where the layout
/// knows it (`created_at` → `createdAt` for users).
pub fn to_document(
    table: &Table,
    id_field: &str,
    row: &Map<String, Value>,
    fields: &[String],
    extras: &Map<String, Value>,
    source: Option<&str>,
    known: &[String],
) -> Document {
    let names = if fields.is_empty() { known } else { fields };
    let mut d = Document::new();
    let id = row.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    d.insert("_id", id.clone());
    if fields.iter().any(|f| f == id_field) && table.columns.iter().all(|c| c.name != id_field) {
        d.insert(id_field, id);
    }
    for c in table.columns.iter().filter(|c| c.name != "id" || id_field == "id") {
        let camel = camel(c.name);
        let field =
            if names.contains(&camel) && !names.iter().any(|f| f == c.name) { camel } else { c.name.to_string() };
        let v = row.get(c.name).unwrap_or(&Value::Null);
        if v.is_null() && !fields.contains(&field) {
            continue;
        }
        let mut b = column_bson(c.kind, v);
        if c.kind == Kind::Jsonb {
            // The value as the file wrote it (key order), while the column still holds it.
            let text =
                extras.get(crate::layout::MIRROR_FIELD).and_then(|m| m.get(JSON_TEXT)).and_then(|t| t.get(&field));
            if let Some(kept) = text.and_then(Value::as_str).and_then(|t| serde_json::from_str::<Value>(t).ok()) {
                if &kept == v {
                    b = Bson::try_from(kept).unwrap_or(b);
                }
            }
        }
        if let (Kind::Numeric(scale), Some(exact)) = (c.kind, extras.get(&field).and_then(Value::as_f64)) {
            // The exact number, while the column still holds it rounded.
            let factor = 10f64.powi(i32::try_from(scale).unwrap_or(0));
            if v.as_f64().is_some_and(|held| ((exact * factor).round() / factor - held).abs() < 1e-9) {
                b = Bson::Double(exact);
            }
        }
        d.insert(field, b);
    }
    for (k, v) in extras {
        if !d.contains_key(k) && k != crate::layout::MIRROR_FIELD {
            d.insert(k.clone(), Bson::try_from(v.clone()).unwrap_or(Bson::Null));
        }
    }
    let mut mirror = bson::doc! { "fields": fields.to_vec() };
    if let Some(source) = source {
        mirror.insert("source", source);
    }
    d.insert(crate::layout::MIRROR_FIELD, mirror);
    d
}

fn column_bson(kind: Kind, v: &Value) -> Bson {
    match (kind, v) {
        (_, Value::Null) => Bson::Null,
        (Kind::Timestamp, Value::String(s)) => {
            crate::mapping::parse_date(s).map_or_else(|| Bson::String(s.clone()), Bson::DateTime)
        }
        (Kind::Numeric(_), Value::Number(n)) => n.as_f64().map_or(Bson::Null, Bson::Double),
        (Kind::BigInt | Kind::Int, Value::Number(n)) => n.as_i64().map_or(Bson::Null, Bson::Int64),
        (_, other) => Bson::try_from(other.clone()).unwrap_or(Bson::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn wall_times_are_written_as_chrono_writes_them_in_every_year() {
        let chrono_text = |ms: i64| {
            chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
                .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        };
        // Around the epoch, leap days, the ends of years 0 and 9999, and beyond them; then
        // 2,000 instants from about 90 BC to AD 10050, every part of the time varied.
        let samples = [
            0,
            -1,
            1,
            951_782_400_000,
            1_709_208_000_123,
            -62_167_219_200_000,
            -62_167_219_200_001,
            253_402_300_799_999,
            253_402_300_800_000,
            -8_334_632_851_200_000,
            8_210_266_876_799_999,
        ];
        for ms in samples.into_iter().chain((0..2000).map(|i| i * 160_000_000_007_i64 - 65_000_000_000_000)) {
            assert_eq!(utc_wall_time(bson::DateTime::from_millis(ms)), chrono_text(ms), "{ms} ms");
        }
    }

    #[test]
    fn is_camel_says_what_camel_makes() {
        for t in TABLES {
            for c in t.columns {
                let made = camel(c.name);
                assert!(is_camel(&made, c.name), "{}", c.name);
                assert!(!is_camel(&format!("{made}x"), c.name) && !is_camel(&made[..made.len() - 1], c.name));
            }
        }
        assert!(is_camel("createdAt", "created_at") && !is_camel("created_at", "created_at"));
        assert!(!is_camel("createdat", "created_at") && !is_camel("CreatedAt", "created_at"));
    }

    #[test]
    fn camel_case_of_columns() {
        assert_eq!(camel("created_at"), "createdAt");
        assert_eq!(camel("total_steps"), "totalSteps");
        assert_eq!(camel("id"), "id");
    }

    #[test]
    fn a_user_record_fills_the_guide_columns_and_keeps_the_rest() {
        let at = bson::DateTime::from_millis(1_760_291_110_123);
        let d = doc! { "_id": "u1", "id": "u1", "email": "a@x.io", "name": "A", "password": "h", "role": "admin",
        "createdAt": at, "updatedAt": at, "team": "ml" };
        let row = to_row(&USERS, "id", &d).unwrap();
        assert_eq!(row.values[0].as_deref(), Some("u1"));
        assert_eq!(row.values[5].as_deref(), Some("2025-10-12 17:45:10.123"));
        assert_eq!(row.extras.get("team"), Some(&Value::String("ml".into())));
        assert!(!row.extras.contains_key("createdAt"));
    }

    #[test]
    fn wrong_kinds_are_refused_with_the_column() {
        let d = doc! { "_id": "j", "job_id": "j", "status": "x", "epoch": 1.5 };
        let e = to_row(&TRAINING_JOBS, "job_id", &d).unwrap_err();
        assert!(e.contains("training_jobs.epoch (INTEGER)") && e.contains("fraction"), "{e}");
        let d = doc! { "_id": "u", "email": "e", "name": 3 };
        assert!(to_row(&USERS, "id", &d).unwrap_err().contains("users.name"));
    }

    #[test]
    fn rounded_numbers_keep_their_exact_value_and_read_back() {
        let d = doc! { "_id": "j", "job_id": "j", "status": "running", "loss": 0.123_456_789, "progress": 42.5 };
        let row = to_row(&TRAINING_JOBS, "job_id", &d).unwrap();
        assert!(row.extras.contains_key("loss"));
        assert!(!row.extras.contains_key("progress"));
        let stored: Map<String, Value> =
            serde_json::from_str(r#"{"id":"j","job_id":"j","status":"running","loss":0.123457,"progress":42.50}"#)
                .unwrap();
        let fields: Vec<String> = ["job_id", "status", "loss", "progress"].iter().map(|s| s.to_string()).collect();
        let back = to_document(&TRAINING_JOBS, "job_id", &stored, &fields, &row.extras, None, &[]);
        assert_eq!(back.get("loss"), Some(&Bson::Double(0.123_456_789)));
        assert_eq!(back.get("progress"), Some(&Bson::Double(42.5)));
    }
}
