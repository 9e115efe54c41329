//! Stage 4, write: hash plaintext passwords (bcrypt, on every core, off the
//! async workers), send the planned inserts and updates to the target in
//! slices, and settle every outcome. A unique-index refusal becomes a reject
//! naming the other holder; an update refused by the version check becomes
//! `skipped (newer)`; anything that raced with another writer is planned
//! again from a fresh read, for a few rounds.
//!
//! Invariant: every planned write ends counted as inserted, updated,
//! skipped-newer or rejected, never silently dropped.

use std::collections::{HashMap, HashSet};

use tokio_util::sync::CancellationToken;

use super::cores::on_all_cores;
use super::memo::Known;
use super::plan::{verdict, Verdict};
use super::scan::Candidate;
use super::target::{Existing, Outcome, Target, Write};
use super::{Conflict, SourceRun};
use crate::error::Fatal;
use crate::layout::SourceSpec;
use crate::mapping::{self, Reject};

/// Writes go to the target in slices of this many, so memory for the
/// operations stays bounded however large the backfill.
const SLICE: usize = 10_000;

/// Rounds of writing what raced with another writer before giving up (for this run).
const ROUNDS: usize = 4;

/// A write whose effect the outcome alone does not tell.
struct Unsure {
    c: Candidate,
    is_insert: bool,
    duplicate: bool,
}

impl<T: Target> SourceRun<'_, T> {
    /// Write inserts and updates and settle every outcome.
    pub(super) async fn apply_writes(
        &mut self,
        inserts: Vec<Candidate>,
        updates: Vec<(Candidate, Existing)>,
    ) -> Result<(), Fatal> {
        let mut inserts = inserts.into_iter();
        loop {
            let slice: Vec<Candidate> = inserts.by_ref().take(SLICE).collect();
            if slice.is_empty() {
                break;
            }
            self.apply_slice(slice, Vec::new()).await?;
        }
        let mut updates = updates.into_iter();
        loop {
            let slice: Vec<(Candidate, Existing)> = updates.by_ref().take(SLICE).collect();
            if slice.is_empty() {
                break;
            }
            self.apply_slice(Vec::new(), slice).await?;
        }
        Ok(())
    }

    async fn apply_slice(&mut self, inserts: Vec<Candidate>, updates: Vec<(Candidate, Existing)>) -> Result<(), Fatal> {
        let mut inserts = hash_plaintexts(&self.spec, inserts, self.stop).await?;
        let (upd_c, upd_e): (Vec<Candidate>, Vec<Existing>) = updates.into_iter().unzip();
        let upd_c = hash_plaintexts(&self.spec, upd_c, self.stop).await?;
        let mut updates: Vec<(Candidate, Existing)> = upd_c.into_iter().zip(upd_e).collect();
        for round in 0..ROUNDS {
            if inserts.is_empty() && updates.is_empty() {
                break;
            }
            let unsure = self.write_round(std::mem::take(&mut inserts), std::mem::take(&mut updates)).await?;
            if unsure.is_empty() {
                break;
            }
            (inserts, updates) = self.settle(unsure, round + 1 == ROUNDS).await?;
        }
        Ok(())
    }

    /// Send one round of writes; return those whose effect is not known.
    async fn write_round(
        &mut self,
        inserts: Vec<Candidate>,
        updates: Vec<(Candidate, Existing)>,
    ) -> Result<Vec<Unsure>, Fatal> {
        let mut writes: Vec<Write<'_>> = inserts.iter().map(Write::Insert).collect();
        writes.extend(updates.iter().map(|(c, was)| Write::Update { c, was }));
        let newer_wins = self.engine.conflict == Conflict::NewerWins;
        let results = self.target.write(&self.spec, &writes, newer_wins).await?;
        drop(writes);
        let mut unsure = Vec::new();
        let pending = inserts.into_iter().map(|c| (c, true)).chain(updates.into_iter().map(|(c, _)| (c, false)));
        for ((c, is_insert), r) in pending.zip(results) {
            match (&r, is_insert) {
                (Outcome::Applied { .. }, true) => self.written(&c, "inserted"),
                (Outcome::Applied { matched: Some(n) }, false) if *n > 0 => self.written(&c, "updated"),
                (Outcome::Failed { code, message }, _) => {
                    let reason = Reject::Refused { id: c.mapped.id.clone(), code: *code, detail: message.clone() };
                    self.rejects.push(c.reject(&self.spec, reason));
                }
                _ => unsure.push(Unsure { c, is_insert, duplicate: matches!(r, Outcome::DuplicateKey { .. }) }),
            }
        }
        Ok(unsure)
    }

    /// Look at what the target holds now for every write whose effect is
    /// unknown, and decide: done, newer, rejected, or another round.
    async fn settle(
        &mut self,
        unsure: Vec<Unsure>,
        last_round: bool,
    ) -> Result<(Vec<Candidate>, Vec<(Candidate, Existing)>), Fatal> {
        let ids: Vec<String> = unsure.iter().map(|u| u.c.mapped.id.clone()).collect();
        let now = self.target.existing(&self.spec, &ids).await?;
        let (mut inserts, mut updates) = (Vec::new(), Vec::new());
        let unsure = if last_round { unsure } else { self.swaps(unsure, &now, &mut updates).await? };
        for Unsure { c, is_insert, duplicate } in unsure {
            let held = now.get(&c.mapped.id);
            let judged = match held {
                Some(ex) if !is_insert => verdict(self.engine, &self.spec, &c, ex),
                _ => Verdict::Write,
            };
            match held {
                Some(ex)
                    if ex.hash.as_deref() == Some(c.mapped.hash.as_str()) && ex.source.as_deref() == Some(&*c.rel) =>
                {
                    // Our write is there (an earlier attempt of a retried batch, or a
                    // command that reports no per-op counts).
                    self.written(&c, if is_insert { "inserted" } else { "updated" });
                }
                Some(_) if judged == Verdict::Newer => {
                    self.summary.skipped_newer += 1;
                    tracing::info!(collection = %self.spec.collection, id = %c.mapped.id, source = %c.locate(), "Kept newer document in MongoDB (newer-wins; the write's version check refused it)");
                }
                Some(_) if matches!(judged, Verdict::Uncomparable(_)) => {
                    let found = if let Verdict::Uncomparable(found) = judged { found } else { String::new() };
                    let field = self.spec.version_field.clone().unwrap_or_default();
                    self.rejects.push(c.reject(&self.spec, Reject::VersionUncomparable { field, found }));
                }
                _ if duplicate && (held.is_none() || !is_insert) => match self.unique_clash(&c).await? {
                    Some(reason) => self.rejects.push(c.reject(&self.spec, reason)),
                    None if last_round => self.rejects.push(c.reject(&self.spec, retry_exhausted(&c))),
                    None => match held {
                        None => inserts.push(c),
                        Some(ex) => updates.push((c, ex.clone())),
                    },
                },
                _ if last_round => self.rejects.push(c.reject(&self.spec, retry_exhausted(&c))),
                None => inserts.push(c),
                Some(ex) => updates.push((c, ex.clone())),
            }
        }
        Ok((inserts, updates))
    }

    /// Updates refused only because they hold each other's unique values (A
    /// takes B's email while B takes A's, or a longer ring): each update
    /// clashes with a document whose own update also clashed. Their values are
    /// released first and the updates go again in the next round, so the
    /// files' state is reached and no two documents ever share a value.
    /// Returns the others.
    async fn swaps(
        &mut self,
        unsure: Vec<Unsure>,
        now: &HashMap<String, Existing>,
        updates: &mut Vec<(Candidate, Existing)>,
    ) -> Result<Vec<Unsure>, Fatal> {
        let clashing: HashSet<String> = unsure
            .iter()
            .filter(|u| u.duplicate && !u.is_insert && now.contains_key(&u.c.mapped.id))
            .map(|u| u.c.mapped.id.clone())
            .collect();
        if clashing.len() < 2 {
            return Ok(unsure);
        }
        let (mut ring, mut rest) = (Vec::new(), Vec::new());
        for u in unsure {
            let holder = match clashing.contains(&u.c.mapped.id) {
                true => self.unique_clash(&u.c).await?,
                false => None,
            };
            match holder {
                Some(Reject::EmailTaken { other_id, .. }) if clashing.contains(&other_id) => ring.push(u.c),
                _ => rest.push(u),
            }
        }
        if ring.len() >= 2 {
            let fields = self.unique_fields();
            let was: Vec<Existing> = ring.iter().map(|c| now.get(&c.mapped.id).cloned().unwrap_or_default()).collect();
            let writes: Vec<Write<'_>> = ring.iter().zip(&was).map(|(c, was)| Write::Update { c, was }).collect();
            let newer_wins = self.engine.conflict == Conflict::NewerWins;
            self.target.release(&self.spec, &writes, &fields, newer_wins).await?;
            drop(writes);
            tracing::info!(collection = %self.spec.collection, documents = ring.len(), "Unique values swapped between documents: released first, then set");
            updates.extend(ring.into_iter().zip(was));
        } else {
            rest.extend(ring.into_iter().map(|c| Unsure { c, is_insert: false, duplicate: true }));
        }
        Ok(rest)
    }

    /// The fields a unique index covers: the index definitions' and the emails.
    fn unique_fields(&self) -> Vec<String> {
        let spec = &self.spec;
        let mut fields = self.engine.indexes.unique_fields(&spec.collection);
        fields.extend(spec.normalize_email.iter().filter(|f| !fields.contains(f)).cloned().collect::<Vec<_>>());
        fields
    }

    /// Count and log a write that took effect, and keep it for watch's picture.
    fn written(&mut self, c: &Candidate, action: &str) {
        if action == "inserted" {
            self.summary.inserted += 1;
        } else {
            self.summary.updated += 1;
        }
        if self.opts.log_changes {
            tracing::info!(collection = %self.spec.collection, id = %c.mapped.id, source = %c.locate(), action, "Mirrored change");
        }
        if let Some(memory) = self.memory.filter(|m| m.keeps_picture()) {
            let known = Known::new(&c.mapped.hash, c.rel.clone());
            self.fresh.push((memory.id_key(&c.id), known));
        }
    }

    /// The other document that holds one of this record's unique values.
    async fn unique_clash(&self, c: &Candidate) -> Result<Option<Reject>, Fatal> {
        let spec = &self.spec;
        let unique: Vec<(String, String)> = self
            .unique_fields()
            .into_iter()
            .filter_map(|f| c.mapped.doc.get_str(&f).ok().map(|v| v.to_string()).map(|v| (f, v)))
            .collect();
        if unique.is_empty() {
            return Ok(None);
        }
        let found = self.target.holder(spec, &c.mapped.id, &unique).await?;
        Ok(found.map(|(email, other_id)| Reject::EmailTaken { email, other_id }))
    }
}

fn retry_exhausted(c: &Candidate) -> Reject {
    Reject::Contended { id: c.mapped.id.clone() }
}

/// Hash plaintext passwords of the records about to be written, on all cores
/// of the blocking pool.
async fn hash_plaintexts(
    spec: &SourceSpec,
    cands: Vec<Candidate>,
    stop: &CancellationToken,
) -> Result<Vec<Candidate>, Fatal> {
    let Some(field) = spec.password_field.clone() else {
        return Ok(cands);
    };
    if cands.iter().all(|c| c.mapped.plaintext.is_none()) {
        return Ok(cands);
    }
    on_all_cores("bcrypt", cands, stop, move |c| {
        // bcrypt fails only on an over-long password; such a record is
        // written without its password rather than in plaintext.
        if mapping::hash_password(&mut c.mapped, &field).is_err() {
            c.mapped.plaintext = None;
        }
    })
    .await
}
