//! The BSON size of a mapped document, measured without serializing it:
//! a document MongoDB would refuse (over 16 MiB) is a reject, not a failed batch.

#[allow(unused_imports)]
use super::*;

/// The document as the writer will store it must fit in MongoDB's 16 MiB.
pub(super) fn check_size(m: &Mapped) -> Result<(), Reject> {
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
pub(super) fn measure(m: &Mapped) -> (usize, &str, usize) {
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
pub(super) fn element_size(key: &str, v: &Bson) -> usize {
    value_size(v).saturating_add(key.len() + 2)
}

/// An array element: its key is its index in decimal.
pub(super) fn array_element_size(index: usize, value: usize) -> usize {
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
