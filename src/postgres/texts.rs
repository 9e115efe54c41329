//! The texts kept beside the rows: `docmirror_rows.raw` holds a 128-bit hash
//! of the record's raw JSON text under the source's mapping rules, and `uniq`
//! its unique values. A `sync` reads them with the content hashes (one query
//! per table) and does not map again a record found with the text its row was
//! written from (see [`crate::reconcile::scan::scan_source`]): a re-sync of
//! unchanged files costs a hash of each record's text.
//!
//! Never kept for a record with a plaintext password (a fast hash of a text
//! holding a password must not be stored), and cleared whenever the row's
//! content hash stops being the one written with it (a released unique value).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::TryStreamExt;
use serde_json::Value;

use super::tables::Table;
use super::Pg;
use crate::error::Fatal;
use crate::reconcile::memo::{FileMemo, Memo, RawHash};
use crate::reconcile::scan::Candidate;
use crate::reconcile::target::Existing;

/// `bytea` input for a text hash (hex format, big-endian).
pub fn raw_to_sql(h: RawHash) -> String {
    format!("\\x{h:032x}")
}

/// A text hash as `bytea` gives it back (`None` unless 16 bytes).
pub fn raw_from_sql(bytes: &[u8]) -> Option<RawHash> {
    let arr: [u8; 16] = bytes.try_into().ok()?;
    Some(u128::from_be_bytes(arr))
}

/// `[field, value, ...]` as JSON text.
pub fn uniq_to_json(emails: &[(Arc<str>, Arc<str>)]) -> String {
    Value::Array(emails.iter().flat_map(|(f, v)| [Value::from(&**f), Value::from(&**v)]).collect()).to_string()
}

/// The pairs back (`None` for no text: none); `None` if the text is not such a list.
pub fn uniq_from_json(text: Option<&str>, fields: &mut HashMap<String, Arc<str>>) -> Option<Vec<(Arc<str>, Arc<str>)>> {
    let Some(text) = text else { return Some(Vec::new()) };
    let items: Vec<String> = serde_json::from_str(text).ok()?;
    if items.len() % 2 != 0 {
        return None;
    }
    items
        .chunks(2)
        .map(|pair| {
            let (f, val) = (pair.first()?, pair.get(1)?);
            let field = match fields.get(f.as_str()) {
                Some(a) => a.clone(),
                None => fields.entry(f.clone()).or_insert_with(|| Arc::from(f.as_str())).clone(),
            };
            Some((field, Arc::from(val.as_str())))
        })
        .collect()
}

/// What a written row keeps of its record's text: (`raw`, `uniq`).
pub fn stored_text(c: &Candidate) -> (Option<String>, Option<String>) {
    match c.stored_text {
        Some(h) => (Some(raw_to_sql(h)), (!c.emails.is_empty()).then(|| uniq_to_json(&c.emails))),
        None => (None, None),
    }
}

impl Pg {
    /// Every row's id and content hash, and per file the texts its rows were
    /// written from (rows that keep one).
    pub(super) async fn hashes_and_texts_of(&self, t: &Table) -> Result<(HashMap<String, Existing>, Memo), Fatal> {
        if self.absent() {
            return Ok((HashMap::new(), Memo::new()));
        }
        let sql = format!(
            "SELECT t.id::text, r.hash, r.source, r.raw, r.uniq FROM {0} t \
             LEFT JOIN docmirror_rows r ON r.tbl = '{0}' AND r.id = t.id",
            t.name
        );
        let client = self.client().await?;
        let failed = |e: tokio_postgres::Error| self.fatal(&format!("cannot read {}", t.name), &e);
        let no_params: [&(dyn tokio_postgres::types::ToSql + Sync); 0] = [];
        let rows = client.query_raw(&sql, no_params).await.map_err(failed)?;
        let mut rows = std::pin::pin!(rows);
        let mut existing = HashMap::new();
        let mut memo = Memo::new();
        let mut fields = HashMap::new();
        // One row at a time, borrowed from where it can be: this is most of a
        // re-sync's reading (and all the rows at once would be a third of its memory).
        while let Some(r) = rows.try_next().await.map_err(failed)? {
            let id: &str = r.try_get(0).map_err(|e| self.fatal("cannot read an id", &e))?;
            let hash: Option<&str> = r.try_get(1).ok().flatten();
            let source: Option<&str> = r.try_get(2).ok().flatten();
            let raw: Option<&[u8]> = r.try_get(3).ok().flatten();
            let text = raw.and_then(raw_from_sql).zip(source).filter(|_| hash.is_some());
            if let Some((h, source)) = text {
                if let Some(emails) = uniq_from_json(r.try_get(4).ok().flatten(), &mut fields) {
                    if !memo.contains_key(source) {
                        memo.insert(Arc::from(source), FileMemo::default());
                    }
                    if let Some(file) = memo.get_mut(source) {
                        file.recs.insert(h, id, emails.iter().map(|(f, v)| (&**f, &**v)));
                    }
                }
            }
            existing.insert(id.to_string(), Existing { hash: hash.map(Box::from), ..Default::default() });
        }
        Ok((existing, memo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_hash_comes_back_as_it_went_in() {
        let h: RawHash = 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10;
        let sql = raw_to_sql(h);
        assert_eq!(sql, "\\x0102030405060708090a0b0c0d0e0f10");
        let bytes: Vec<u8> = (1..=16).collect();
        assert_eq!(raw_from_sql(&bytes), Some(h));
        assert_eq!(raw_from_sql(&bytes[..15]), None);
    }

    #[test]
    fn unique_values_come_back_as_they_went_in() {
        let pairs: Vec<(Arc<str>, Arc<str>)> =
            vec![(Arc::from("email"), Arc::from("a@b.c")), (Arc::from("x"), Arc::from("\"q\""))];
        let json = uniq_to_json(&pairs);
        let mut fields = HashMap::new();
        let back = uniq_from_json(Some(&json), &mut fields).unwrap();
        assert_eq!(back, pairs);
        assert_eq!(uniq_from_json(Some(r#"["email"]"#), &mut fields), None);
        assert_eq!(uniq_from_json(Some("{}"), &mut fields), None);
        assert_eq!(uniq_from_json(Some("[]"), &mut fields), Some(Vec::new()));
        assert_eq!(uniq_from_json(None, &mut fields), Some(Vec::new()));
    }
}
