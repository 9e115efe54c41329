//! A changed file's memo hits, and which of them the scan must look at.
//!
//! A million-record file with one record changed has a million hits, and
//! looking each up in file order reads the memo at random: a search of the
//! sorted list and the record's bytes, each a cache miss, about a microsecond
//! a record. The hits are found all at once ([`super::lookup`]), and a hit's
//! bytes are read only where the scan must look at its id or unique values:
//! a hit that may clash with a changed record ([`Flagged`], found by reading
//! the memo's bytes in the order they lie). The others stay in the memo,
//! marked ([`super::memo::Marked`]).

use std::sync::Arc;

use super::firsts::ClashKeys;
use super::lookup::Found;
use super::packed::{self, Places, Slot};
use crate::layout::SourceSpec;
use crate::mapping::{map_record, Mapped};
use crate::source;

/// The places (see [`super::packed::Recs::places_where`]) of the memo's
/// records that share an id or a unique value with a changed record: the
/// only hits the first-keeps-it rule must look at.
#[derive(Debug, Default)]
pub struct Flagged(pub Places);

impl Flagged {
    pub fn contains(&self, at: u32) -> bool {
        self.0.contains(&at)
    }
}

/// A text of the file found in the memo.
pub(super) struct Hit<'a> {
    pub slot: &'a Slot,
    /// The hits that must be checked (`None`: all of them).
    pub flagged: Option<&'a Flagged>,
    pub from_memory: bool,
    pub file_idx: usize,
    pub position: Option<usize>,
}

/// The ids and unique values that a memo hit of one file could share with
/// another record of the file: those of the records that are not hits
/// (changed or new), and those of texts that occur twice. The hits of a file
/// were settled together in its last scan, so they cannot clash with each other.
/// `keyed`: the records (by index in the file) that may be either, with
/// their texts (a hit's is not needed; a record that is not a hit without
/// its text adds nothing).
pub(super) fn clash_keys<'t>(
    (spec, fields): (&SourceSpec, &[Arc<str>]),
    salt: &str,
    keyed: impl Iterator<Item = (usize, Option<&'t str>)>,
    (found, recs): (&Found<'_, Slot>, &packed::Recs),
) -> ClashKeys {
    let mut keys = ClashKeys::default();
    for (i, text) in keyed {
        match found.slot(i) {
            Some(_) if !found.twice(i) => {}
            Some(slot) => {
                let Some(rec) = recs.rec(slot) else { continue };
                keys.insert(Arc::from(rec.id()));
                rec.uniques().for_each(|(_, v)| keys.insert(Arc::from(v)));
            }
            None => {
                let Some(text) = text else { continue };
                // Mapped here only for its keys; the scan maps it again in order.
                let Ok(value) = source::parse_value(text) else { continue };
                if let Ok(m) = map_record(spec, salt, &value) {
                    emails_of(fields, &m).into_iter().for_each(|(_, v)| keys.insert(v));
                    keys.insert(Arc::from(m.id));
                }
            }
        }
    }
    keys
}

/// The record's unique values, under the scan's shared field names.
pub(super) fn emails_of(fields: &[Arc<str>], m: &Mapped) -> Vec<(Arc<str>, Arc<str>)> {
    fields.iter().filter_map(|f| m.doc.get_str(f).ok().map(|v| (f.clone(), Arc::from(v)))).collect()
}
