//! JSON values to BSON: field names MongoDB can store, numbers by width,
//! dates in every form the platform writes, nesting as deep as MongoDB allows.

#[allow(unused_imports)]
use super::*;
use chrono::TimeZone;
use chrono_tz::Tz;

/// A field name MongoDB can store and address. `within` is the path of the
/// object holding it.
pub(super) fn check_key(key: &str, within: &[Seg<'_>]) -> Result<(), Reject> {
    if key == DUPLICATE_KEYS_MARKER {
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
pub(super) fn convert<'a>(v: &'a Value, path: &mut Vec<Seg<'a>>, level: usize) -> Result<Bson, Reject> {
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
pub(super) fn number(n: &serde_json::Number) -> Bson {
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

pub(super) fn to_int64(field: &str, v: &Value) -> Result<Bson, Reject> {
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
pub(super) fn f64_to_i64(f: f64) -> i64 {
    // Formatting and parsing avoids a lossy `as` cast; the value is whole and in range.
    format!("{f:.0}").parse().unwrap_or(0)
}

pub(super) fn to_date(field: &str, v: &Value, zone: Tz) -> Result<Bson, Reject> {
    match v {
        Value::Null => Ok(Bson::Null),
        Value::String(s) => parse_date_in(s, zone)
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
    parse_date_in(s, chrono_tz::UTC)
}

/// [`parse_date`], reading a time without an offset (and a bare date, as its
/// midnight) in `zone`. A local time that happens twice (the hour the clocks
/// go back) is the first; one that never happens (the hour they go forward)
/// is not a date.
pub fn parse_date_in(s: &str, zone: Tz) -> Option<bson::DateTime> {
    let s = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(bson::DateTime::from_millis(d.timestamp_millis()));
    }
    if let Ok(d) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(bson::DateTime::from_millis(d.timestamp_millis()));
    }
    let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|fmt| NaiveDateTime::parse_from_str(s, fmt).ok())
        .or_else(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)))?;
    let at = zone.from_local_datetime(&naive).earliest()?;
    Some(bson::DateTime::from_millis(at.timestamp_millis()))
}

/// A version the app stored in the target, as a time the file's can be
/// compared with: a date, or what the files' own date forms would be (an
/// ISO-8601 string, epoch milliseconds). `None` when it is none of them.
pub fn comparable_version(b: &Bson, zone: Tz) -> Option<bson::DateTime> {
    match b {
        Bson::DateTime(d) => Some(*d),
        Bson::String(s) => parse_date_in(s, zone),
        Bson::Int64(n) => Some(bson::DateTime::from_millis(*n)),
        Bson::Int32(n) => Some(bson::DateTime::from_millis(i64::from(*n))),
        Bson::Double(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
            format!("{f:.0}").parse().ok().map(bson::DateTime::from_millis)
        }
        _ => None,
    }
}
