//! `verify`: the cutover check. Reads the files and MongoDB and reports, per
//! collection, every record that is missing, extra, different (by field;
//! passwords only as "differs"), newer in MongoDB, or rejected. Writes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bson::{Bson, Document};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::Fatal;
use crate::layout::SourceSpec;
use crate::reconcile::cores::on_all_cores;
use crate::reconcile::scan::{scan_source, Candidate, Scanned};
use crate::reconcile::target::Inspect;
use crate::reconcile::Engine;
use crate::sink::target::id_string;
use crate::summary::count;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Difference {
    pub id: String,
    pub source: String,
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RejectedLine {
    pub source: String,
    pub id: Option<String>,
    pub reason_code: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct CollectionReport {
    pub collection: String,
    /// Records in the files (mirrorable or not).
    pub in_files: u64,
    /// Documents in the collection.
    pub in_mongodb: u64,
    pub missing: Vec<Difference>,
    pub extra: Vec<String>,
    pub different: Vec<Difference>,
    pub newer_in_mongodb: Vec<Difference>,
    pub rejected: Vec<RejectedLine>,
}

impl CollectionReport {
    pub fn problems(&self) -> usize {
        self.missing.len() + self.extra.len() + self.different.len() + self.newer_in_mongodb.len() + self.rejected.len()
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Which database was compared ("MongoDB", "PostgreSQL"): for the text report.
    #[serde(skip)]
    pub target: &'static str,
    pub in_sync: bool,
    pub collections: Vec<CollectionReport>,
}

/// Compare every source with its collection.
pub async fn verify<T: Inspect>(engine: &Arc<Engine>, sink: &T) -> Result<Report, Fatal> {
    let mut report = Report { target: sink.name(), in_sync: true, collections: Vec::new() };
    for spec_idx in 0..engine.layout.sources.len() {
        let rep = verify_source(engine, sink, spec_idx).await?;
        if rep.problems() > 0 {
            report.in_sync = false;
        }
        report.collections.push(rep);
    }
    Ok(report)
}

/// One source against its collection.
async fn verify_source<T: Inspect>(engine: &Arc<Engine>, sink: &T, spec_idx: usize) -> Result<CollectionReport, Fatal> {
    let e = engine.clone();
    let scanned = tokio::task::spawn_blocking(move || {
        scan_source(&e, None, crate::reconcile::scan::Texts::None, spec_idx, None, None)
    })
    .await
    .map_err(Fatal::task("scan"))??;
    let spec = engine.layout.sources[spec_idx].clone();
    let docs = sink.documents(&spec).await?;
    let mut rep = CollectionReport {
        collection: spec.collection.clone(),
        in_files: scanned.records,
        in_mongodb: count(docs.len()),
        ..Default::default()
    };
    let rejected_ids = rejected(sink, &spec, &scanned, &mut rep).await?;
    let by_id: HashMap<String, &Document> = docs.iter().filter_map(|d| Some((id_string(d.get("_id")?), d))).collect();
    let file_ids: HashSet<&str> = scanned.candidates.iter().map(|c| c.mapped.id.as_str()).collect();
    let checks: Vec<(Candidate, Option<Document>, Outcome)> = scanned
        .candidates
        .iter()
        .filter(|c| !rejected_ids.contains(&c.mapped.id))
        .map(|c| (c.clone(), by_id.get(&c.mapped.id).map(|d| (*d).clone()), Outcome::Same))
        .collect();
    let s2 = spec.clone();
    // Field comparison may run bcrypt for plaintext passwords: on every core, off the async workers.
    let compared = on_all_cores("compare", checks, &CancellationToken::new(), move |(c, d, outcome)| {
        *outcome = compare(&s2, c, d.as_ref())
    })
    .await?;
    for (c, _, outcome) in compared {
        let diff = Difference { id: c.mapped.id.clone(), source: c.locate(), fields: Vec::new() };
        match outcome {
            Outcome::Same => {}
            Outcome::Missing => rep.missing.push(diff),
            Outcome::Different(fields) => rep.different.push(Difference { fields, ..diff }),
            Outcome::Newer(fields) => rep.newer_in_mongodb.push(Difference { fields, ..diff }),
        }
    }
    let mut extra: Vec<String> = by_id
        .keys()
        .filter(|id| {
            !file_ids.contains(id.as_str()) && !rejected_ids.contains(*id) && !scanned.protected_ids.contains(*id)
        })
        .cloned()
        .collect();
    extra.sort();
    rep.extra = extra;
    Ok(rep)
}

/// The rejects of a source: those the scan finds, and those found only when
/// writing (an email held by another document), from `mirror_rejects`.
/// Returns the ids of records rejected when written (not compared field by field).
async fn rejected<T: Inspect>(
    sink: &T,
    spec: &SourceSpec,
    scanned: &Scanned,
    rep: &mut CollectionReport,
) -> Result<HashSet<String>, Fatal> {
    let stored_rejects = sink.stored_rejects(&spec.collection).await?;
    let mut seen_keys = HashSet::new();
    // Ids of records that were mapped but not written (not compared field by
    // field). A record rejected by the scan (say a second record with an id
    // already used) is not among them: the first holder of that id is compared.
    let mut rejected_ids: HashSet<String> = HashSet::new();
    for r in &scanned.rejects {
        seen_keys.insert(r.key.clone());
        rep.rejected.push(RejectedLine {
            source: r.locate(),
            id: r.id.clone(),
            reason_code: r.reason.code().to_string(),
            reason: r.reason.to_string(),
        });
    }
    let candidate_ids: HashSet<&str> = scanned.candidates.iter().map(|c| c.mapped.id.as_str()).collect();
    for d in &stored_rejects {
        let key = d.get_str("_id").unwrap_or_default().to_string();
        let source = d.get_str("source").unwrap_or_default().to_string();
        let still_there = scanned.read_ok.contains(source.as_str()) || scanned.bad.contains(source.as_str());
        if seen_keys.contains(&key) || !still_there || d.get_str("reason_code").unwrap_or_default().starts_with("file_")
        {
            continue;
        }
        // Only rejects of records that are still in the files (a sync clears
        // the others from mirror_rejects).
        let Some(id) = d.get_str("record_id").ok().filter(|id| candidate_ids.contains(id)) else {
            continue;
        };
        rejected_ids.insert(id.to_string());
        let position = d.get("position").and_then(crate::sink::bson_i64);
        rep.rejected.push(RejectedLine {
            source: match position {
                Some(p) => format!("{source}[{p}]"),
                None => source,
            },
            id: Some(id.to_string()),
            reason_code: d.get_str("reason_code").unwrap_or_default().to_string(),
            reason: d.get_str("reason").unwrap_or_default().to_string(),
        });
    }
    Ok(rejected_ids)
}

pub enum Outcome {
    Same,
    Missing,
    Different(Vec<String>),
    Newer(Vec<String>),
}

/// One record against its document, as `verify` (and watch's drift check) compares them.
pub fn compare(spec: &SourceSpec, c: &Candidate, stored: Option<&Document>) -> Outcome {
    let Some(stored) = stored else {
        return Outcome::Missing;
    };
    let mut fields = Vec::new();
    for (k, v) in c.mapped.doc.iter().filter(|(k, _)| k.as_str() != "_id") {
        if !values_equal(v, stored.get(k)) {
            fields.push(k.clone());
        }
    }
    if let (Some(pw_field), Some(plain)) = (spec.password_field.as_deref(), c.mapped.plaintext.as_ref()) {
        let ok = stored.get_str(pw_field).ok().is_some_and(|h| bcrypt::verify(plain.expose(), h).unwrap_or(false));
        if !ok {
            fields.push(pw_field.to_string());
        }
    }
    // Fields the mirror wrote earlier that the record no longer has.
    if let Ok(owned) = stored.get_document("_mirror").and_then(|m| m.get_array("fields")) {
        let mine = c.mapped.fields();
        for f in owned.iter().filter_map(Bson::as_str) {
            if !mine.iter().any(|x| x == f) && stored.contains_key(f) {
                fields.push(f.to_string());
            }
        }
    }
    if fields.is_empty() {
        return Outcome::Same;
    }
    for f in fields.iter_mut() {
        if spec.password_field.as_deref() == Some(f.as_str()) {
            f.push_str(" (differs)");
        }
    }
    let newer = match (&spec.version_field, c.mapped.version) {
        (Some(vf), Some(file_v)) => stored
            .get(vf)
            .and_then(|v| crate::mapping::comparable_version(v, spec.naive_zone()))
            .is_some_and(|held| held > file_v),
        _ => false,
    };
    if newer {
        Outcome::Newer(fields)
    } else {
        Outcome::Different(fields)
    }
}

/// Equality as the application sees it: numbers by value whatever their BSON
/// width, documents by their fields whatever their order.
pub fn values_equal(a: &Bson, b: Option<&Bson>) -> bool {
    let Some(b) = b else { return false };
    match (a, b) {
        (Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_), Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_)) => {
            match (crate::sink::bson_i64(a), crate::sink::bson_i64(b)) {
                (Some(x), Some(y)) => x == y,
                _ => as_f64(a) == as_f64(b),
            }
        }
        (Bson::Document(x), Bson::Document(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| values_equal(v, y.get(k)))
        }
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, Some(q)))
        }
        _ => a == b,
    }
}

fn as_f64(b: &Bson) -> Option<f64> {
    match b {
        Bson::Double(f) => Some(*f),
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => i32::try_from(*i).ok().map(f64::from),
        _ => None,
    }
}

/// Render a report for people.
pub fn render_text(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let target = if report.target.is_empty() { "MongoDB" } else { report.target };
    let short = if target == "MongoDB" { "in mongo" } else { "in target" };
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>9} {:>8} {:>6} {:>10} {:>6} {:>9}",
        "collection", "in files", short, "missing", "extra", "different", "newer", "rejected"
    );
    for c in &report.collections {
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>8} {:>6} {:>10} {:>6} {:>9}",
            c.collection,
            c.in_files,
            c.in_mongodb,
            c.missing.len(),
            c.extra.len(),
            c.different.len(),
            c.newer_in_mongodb.len(),
            c.rejected.len()
        );
    }
    let mut details: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for c in &report.collections {
        for d in &c.missing {
            details.entry("missing").or_default().push(format!("{}/{} (from {})", c.collection, d.id, d.source));
        }
        for id in &c.extra {
            details
                .entry("extra")
                .or_default()
                .push(format!("{}/{} (in {target}, not in the files)", c.collection, id));
        }
        for d in &c.different {
            details.entry("different").or_default().push(format!(
                "{}/{}: {} (from {})",
                c.collection,
                d.id,
                d.fields.join(", "),
                d.source
            ));
        }
        for d in &c.newer_in_mongodb {
            details.entry("newer").or_default().push(format!(
                "{}/{}: {} (from {})",
                c.collection,
                d.id,
                d.fields.join(", "),
                d.source
            ));
        }
        for r in &c.rejected {
            details.entry("rejected").or_default().push(format!("{} {}: {}", c.collection, r.source, r.reason));
        }
    }
    for kind in ["missing", "different", "newer", "extra", "rejected"] {
        for line in details.get(kind).into_iter().flatten() {
            let _ = writeln!(out, "{kind:<9} {line}");
        }
    }
    let problems: usize = report.collections.iter().map(CollectionReport::problems).sum();
    if report.in_sync {
        let _ = writeln!(out, "verify: {target} holds exactly what the files hold");
    } else {
        let _ = writeln!(out, "verify: {problems} difference(s) between the files and {target}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn numbers_compare_by_value() {
        assert!(values_equal(&Bson::Int32(3), Some(&Bson::Int64(3))));
        assert!(values_equal(&Bson::Int32(3), Some(&Bson::Double(3.0))));
        assert!(!values_equal(&Bson::Double(0.5), Some(&Bson::Double(0.25))));
        assert!(!values_equal(&Bson::Int32(1), None));
        let a = doc! {"x": 1, "y": {"z": [1, 2]}};
        let b = doc! {"y": {"z": [1i64, 2.0]}, "x": 1.0};
        assert!(values_equal(&Bson::Document(a), Some(&Bson::Document(b))));
    }
}
