//! Stage 3, plan: compare each mapped record with what the target holds and
//! sort it into insert, update or unchanged (content hashes; bcrypt for
//! plaintext passwords, which are kept out of the hash). A record whose id a
//! still-existing other file holds is rejected (first keeps it, across files).
//!
//! Invariant: every candidate ends in exactly one of `inserts`, `updates`,
//! `unchanged` or the rejects.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use super::cores::on_all_cores;
use super::rejects::RejectRecord;
use super::scan::Candidate;
use super::target::{Existing, Held, Target};
use super::{Conflict, Engine, OnDelete};
use crate::error::Fatal;
use crate::layout::SourceSpec;
use crate::mapping::{comparable_version, Reject};
use crate::source;

/// The planned writes for one chunk of one source.
#[derive(Debug, Default)]
pub struct Plan {
    pub inserts: Vec<Candidate>,
    pub updates: Vec<(Candidate, Existing)>,
    pub unchanged: u64,
    /// Records whose document is newer in the target (newer-wins): left alone.
    pub newer: Vec<Candidate>,
}

/// What newer-wins says of writing a record over what the target holds.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Write,
    /// The target's version is newer: leave it.
    Newer,
    /// The target's version is not a time: it cannot be compared, so it is
    /// not overwritten (what it holds, for the reject).
    Uncomparable(String),
}

/// Newer-wins, comparing like with like: a date as it is, a string or a
/// number as the files' own dates would be read.
pub fn verdict(engine: &Engine, spec: &SourceSpec, c: &Candidate, ex: &Existing) -> Verdict {
    let Some(file) = c.mapped.version.filter(|_| engine.conflict == Conflict::NewerWins) else {
        return Verdict::Write;
    };
    let held = match &ex.version {
        Held::Absent | Held::Unread => return Verdict::Write,
        Held::Date(t) => *t,
        Held::Other(b) => match comparable_version(b, spec.naive_zone()) {
            Some(t) => t,
            None => return Verdict::Uncomparable(b.to_string()),
        },
    };
    if held > file {
        Verdict::Newer
    } else {
        Verdict::Write
    }
}

/// Plan one chunk of candidates against what the target holds.
pub async fn plan<T: Target>(
    engine: &Engine,
    target: &T,
    spec: &SourceSpec,
    candidates: Vec<Candidate>,
    existing: &HashMap<String, Existing>,
    rejects: &mut Vec<RejectRecord>,
    stop: &CancellationToken,
) -> Result<Plan, Fatal> {
    let mut plan = Plan::default();
    let mut plaintext_same = Vec::new();
    for c in candidates {
        let Some(ex) = existing.get(&c.mapped.id) else {
            plan.inserts.push(c);
            continue;
        };
        if let Some(other) = other_live_source(engine, spec, &c, ex) {
            let reason = Reject::DuplicateId { id: c.mapped.id.clone(), first: other };
            rejects.push(c.reject(spec, reason));
        } else if ex.hash.as_deref() != Some(c.mapped.hash.as_str()) {
            plan.updates.push((c, ex.clone()));
        } else if c.mapped.plaintext.is_some() {
            plaintext_same.push((c, ex.clone()));
        } else {
            plan.unchanged += 1;
        }
    }
    // Plaintext passwords are not in the content hash: check them with bcrypt.
    if !plaintext_same.is_empty() {
        for (c, ex, differs) in plaintext_changed(target, spec, plaintext_same, stop).await? {
            if differs {
                plan.updates.push((c, ex));
            } else {
                plan.unchanged += 1;
            }
        }
    }
    // Updates need the fields the mirror owns and the version: one batched read.
    if !plan.updates.is_empty() {
        let ids: Vec<String> = plan.updates.iter().map(|(c, _)| c.mapped.id.clone()).collect();
        let details = target.existing(spec, &ids).await?;
        let mut updates = Vec::with_capacity(plan.updates.len());
        for (c, mut ex) in std::mem::take(&mut plan.updates) {
            if let Some(d) = details.get(&c.mapped.id) {
                ex = d.clone();
            }
            match verdict(engine, spec, &c, &ex) {
                Verdict::Write => updates.push((c, ex)),
                Verdict::Newer => plan.newer.push(c),
                Verdict::Uncomparable(found) => {
                    let field = spec.version_field.clone().unwrap_or_default();
                    rejects.push(c.reject(spec, Reject::VersionUncomparable { field, found }));
                }
            }
        }
        plan.updates = updates;
    }
    Ok(plan)
}

/// For one-record-per-file sources: another file that still exists already holds this id.
fn other_live_source(engine: &Engine, spec: &SourceSpec, c: &Candidate, ex: &Existing) -> Option<String> {
    let src = ex.source.as_ref()?;
    if **src == *c.rel || !spec.is_pattern() || !spec.owns_rel(src) {
        return None;
    }
    let rel = src.strip_prefix(&format!("{}/", spec.root.label()))?;
    let path = engine.roots.dir(spec.root).join(rel);
    // Only a file that still holds the same id keeps it.
    let file = source::read_stable(&path, engine.limits).ok()??;
    let records = source::parse(&file.bytes, spec.shape).ok()?;
    records
        .iter()
        .any(|r| r.value.get(&spec.id_field).and_then(|v| v.as_str()) == Some(c.mapped.id.as_str()))
        .then(|| src.to_string())
}

/// Whether each plaintext password differs from the stored hash (bcrypt on
/// every core, off the async workers).
async fn plaintext_changed<T: Target>(
    target: &T,
    spec: &SourceSpec,
    same: Vec<(Candidate, Existing)>,
    stop: &CancellationToken,
) -> Result<Vec<(Candidate, Existing, bool)>, Fatal> {
    let Some(field) = spec.password_field.clone() else {
        return Ok(same.into_iter().map(|(c, e)| (c, e, false)).collect());
    };
    let ids: Vec<String> = same.iter().map(|(c, _)| c.mapped.id.clone()).collect();
    let stored = target.passwords(spec, &field, &ids).await?;
    let items: Vec<(Candidate, Existing, bool)> = same.into_iter().map(|(c, e)| (c, e, true)).collect();
    on_all_cores("bcrypt", items, stop, move |(c, _, differs)| {
        if let (Some(p), Some(h)) = (c.mapped.plaintext.as_ref(), stored.get(&c.mapped.id)) {
            *differs = !bcrypt::verify(p.expose(), h).unwrap_or(false);
        }
    })
    .await
}

/// `--dry-run`: one line per write the plan would make.
pub fn print_plan(spec: &SourceSpec, plan: &Plan) {
    for c in &plan.inserts {
        println!("would insert {}/{} from {}", spec.collection, c.mapped.id, c.locate());
    }
    for (c, ex) in &plan.updates {
        let fields = c.mapped.fields();
        let removed: Vec<&String> = ex.fields.iter().filter(|f| !fields.contains(f)).collect();
        if removed.is_empty() {
            println!("would update {}/{} from {}", spec.collection, c.mapped.id, c.locate());
        } else {
            println!("would update {}/{} from {} (removing {:?})", spec.collection, c.mapped.id, c.locate(), removed);
        }
    }
}

/// `--dry-run`: one line per delete.
pub fn print_deletes(spec: &SourceSpec, deletes: &[(String, Existing)], on_delete: OnDelete) {
    if on_delete == OnDelete::Keep {
        return;
    }
    let verb = if on_delete == OnDelete::Archive { "archive" } else { "delete" };
    for (id, ex) in deletes {
        println!("would {verb} {}/{} (gone from {})", spec.collection, id, ex.source.as_deref().unwrap_or("?"));
    }
}
