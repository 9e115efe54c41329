//! `mirror_state`: what the mirror records about itself in MongoDB (last full
//! reconcile, last change per collection, document counts, version), so
//! `docmirror status` can show it from any machine that reaches MongoDB.

use std::time::Duration;

use bson::{doc, Bson, Document};

use crate::error::Fatal;
use crate::reconcile::memo::{Count, Memory};
use crate::reconcile::target::Inspect;
use crate::reconcile::Engine;
use crate::sink::{Sink, WriteOp};
use crate::summary::Summary;

/// Where a target keeps `mirror_state` (one record, as a document), and the
/// little else that `status`, `cutover` and `watch` need of it.
pub trait StateStore: Inspect {
    /// `$set` these fields (a dotted name reaches into a sub-document) in
    /// the state record, making it if needed.
    fn set_state(&self, fields: Document) -> impl std::future::Future<Output = Result<(), Fatal>> + Send;

    /// The state record, if docmirror ever wrote one here.
    fn read_state(&self) -> impl std::future::Future<Output = Result<Option<Document>, Fatal>> + Send;

    /// How many rejects are stored now.
    fn count_rejects(&self) -> impl std::future::Future<Output = Result<u64, Fatal>> + Send;

    /// Whether the database answers (the metrics and `/readyz` are told).
    fn ping(&self) -> impl std::future::Future<Output = bool> + Send;

    /// Make the target ready for writes: MongoDB's indexes, PostgreSQL's schema.
    fn prepare(&self, engine: &Engine) -> impl std::future::Future<Output = Result<(), Fatal>> + Send;

    /// Which database, for people.
    fn place(&self) -> String;

    /// Deletes refused since the last call because other rows still refer to
    /// the row (PostgreSQL's foreign keys; never on MongoDB). Another pass
    /// deletes them once the rows referring to them are gone.
    fn take_blocked_deletes(&self) -> u64 {
        0
    }

    /// The kind and first-seen time of every record listed in `mirror_drift`
    /// (watch's drift reports; MongoDB only, so none elsewhere).
    fn drift_kinds(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<(String, Option<bson::DateTime>)>, Fatal>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Another record of `mirror_state` than the mirror's own (`reverse`'s;
    /// MongoDB only).
    fn read_state_of(&self, _id: &str) -> impl std::future::Future<Output = Result<Option<Document>, Fatal>> + Send {
        async { Ok(None) }
    }
}

impl StateStore for Sink {
    async fn set_state(&self, fields: Document) -> Result<(), Fatal> {
        let op = WriteOp::Update {
            coll: STATE.to_string(),
            filter: doc! { "_id": ID },
            update: doc! { "$set": fields },
            upsert: true,
        };
        Ok(self.write(vec![op]).await.map(|_| ())?)
    }

    async fn read_state(&self) -> Result<Option<Document>, Fatal> {
        Ok(self.find_all(STATE, doc! { "_id": ID }, None).await?.into_iter().next())
    }

    async fn count_rejects(&self) -> Result<u64, Fatal> {
        self.collection(crate::reconcile::REJECTS)
            .count_documents(doc! {})
            .await
            .map_err(|e| Fatal::Mongo(self.scrub(&e.to_string())))
    }

    async fn ping(&self) -> bool {
        Sink::ping(self).await
    }

    async fn prepare(&self, engine: &Engine) -> Result<(), Fatal> {
        crate::sink::indexes::apply(&engine.indexes, self).await
    }

    fn place(&self) -> String {
        self.database().name().to_string()
    }

    async fn drift_kinds(&self) -> Result<Vec<(String, Option<bson::DateTime>)>, Fatal> {
        let kind = |d: Document| {
            let k = d.get_str("kind").map_or_else(|_| "unknown".to_string(), str::to_string);
            Some((k, d.get_datetime("first_seen").ok().copied()))
        };
        Ok(self.find_map(DRIFT, doc! {}, Some(doc! { "kind": 1, "first_seen": 1 }), kind).await?)
    }

    async fn read_state_of(&self, id: &str) -> Result<Option<Document>, Fatal> {
        Ok(self.find_all(STATE, doc! { "_id": id }, None).await?.into_iter().next())
    }
}

pub const STATE: &str = "mirror_state";
const ID: &str = "docmirror";

fn summary_doc(s: &Summary) -> Document {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    doc! {
        "files": n(s.files), "read": n(s.read), "inserted": n(s.inserted), "updated": n(s.updated),
        "unchanged": n(s.unchanged), "skipped_newer": n(s.skipped_newer), "rejected": n(s.rejected),
        "bad_files": n(s.bad_files), "archived": n(s.archived), "deleted": n(s.deleted), "deletes_held": n(s.deletes_held),
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Documents per collection: from watch's picture when it has one (a count
/// is a full scan on some servers, and this runs every few seconds while
/// changes flow), else from the server's estimate; watch asks the server for
/// that at most once a minute per collection (see [`Memory::count_due`]).
async fn counts<T: StateStore>(engine: &Engine, sink: &T, memory: Option<&Memory>) -> Document {
    let mut d = Document::new();
    for spec in engine.layout.sources.iter() {
        let c = &spec.collection;
        let n = match (memory.and_then(|m| m.documents(c)), memory) {
            (Some(n), _) => Some(u64::try_from(n).unwrap_or(u64::MAX)),
            (None, Some(m)) => match m.count_due(c, std::time::Instant::now()) {
                Count::Recent(n) => n,
                Count::Ask => {
                    let n = sink.count(spec).await.ok();
                    tracing::debug!(collection = %c, documents = ?n, "Counted the documents on the server");
                    m.note_count(c, n);
                    n
                }
            },
            (None, None) => sink.count(spec).await.ok(),
        };
        d.insert(c.clone(), i64::try_from(n.unwrap_or(0)).unwrap_or(i64::MAX));
    }
    d
}

async fn set<T: StateStore>(sink: &T, fields: Document) -> Result<(), Fatal> {
    sink.set_state(fields).await
}

/// After a full reconcile (sync, or watch's first and periodic ones).
pub async fn record_full<T: StateStore>(
    engine: &Engine,
    sink: &T,
    memory: Option<&Memory>,
    mode: &str,
    s: &Summary,
    took: Duration,
) -> Result<(), Fatal> {
    let now = bson::DateTime::now();
    let rejects = sink.count_rejects().await.unwrap_or(0);
    let mut last = summary_doc(s);
    last.insert("at", now);
    last.insert("mode", mode);
    last.insert("seconds", took.as_secs_f64());
    set(
        sink,
        doc! {
            "version": env!("CARGO_PKG_VERSION"), "host": hostname(), "pid": i64::from(std::process::id()),
            "mode": mode, "updated_at": now, "last_full_reconcile": last,
            "documents": counts(engine, sink, memory).await, "rejects": i64::try_from(rejects).unwrap_or(i64::MAX),
        },
    )
    .await
}

/// How watch is doing, as its heartbeat records it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Changed files not yet applied (waiting for their quiet period, a retry, or in flight).
    pub pending_files: u64,
    /// Age of the oldest file change not yet applied; 0 when idle.
    pub lag_seconds: f64,
}

/// watch's heartbeat (every few seconds) and the changes it applied since the
/// last one, each with the time it was applied.
pub async fn record_change<T: StateStore>(
    engine: &Engine,
    sink: &T,
    memory: Option<&Memory>,
    changes: &[(String, bson::DateTime)],
    totals: &Summary,
    progress: Progress,
) -> Result<(), Fatal> {
    let now = bson::DateTime::now();
    let mut fields = doc! {
        "mode": "watch", "updated_at": now, "pid": i64::from(std::process::id()), "host": hostname(),
        "watch_totals": summary_doc(totals), "documents": counts(engine, sink, memory).await,
        "watch": {
            "running": true, "host": hostname(), "pid": i64::from(std::process::id()),
            "heartbeat_at": now, "pending_files": i64::try_from(progress.pending_files).unwrap_or(i64::MAX),
            "lag_seconds": progress.lag_seconds,
            // The folders it reads: `reverse` refuses to write into them.
            "data_dir": engine.roots.data.display().to_string(),
            "artifacts_dir": engine.roots.artifacts.display().to_string(),
        },
    };
    for (c, at) in changes {
        fields.insert(format!("last_change.{c}"), *at);
    }
    set(sink, fields).await
}

/// The end of the migration: when, with what, and the digest of the verify
/// report that showed MongoDB held what the files held.
pub async fn record_cutover<T: StateStore>(
    sink: &T,
    report: &crate::verify::Report,
    digest: &str,
) -> Result<bson::DateTime, Fatal> {
    let now = bson::DateTime::now();
    let cut = doc! {
        "at": now, "host": hostname(), "version": env!("CARGO_PKG_VERSION"),
        "documents": documents_of(report), "verify_digest": digest,
    };
    set(sink, doc! { "cutover": cut, "updated_at": now }).await?;
    Ok(now)
}

/// When the migration was cut over, if it was.
pub fn cutover_at(state: &Document) -> Option<bson::DateTime> {
    state.get_document("cutover").ok()?.get_datetime("at").ok().copied()
}

fn documents_of(report: &crate::verify::Report) -> Document {
    report
        .collections
        .iter()
        .map(|c| (c.collection.clone(), Bson::Int64(i64::try_from(c.in_mongodb).unwrap_or(i64::MAX))))
        .collect()
}

/// The outcome of a `verify` (or of the verify inside `cutover`): when, in
/// sync or not, how many differences, and the report's digest.
pub async fn record_verify<T: StateStore>(sink: &T, report: &crate::verify::Report, digest: &str) -> Result<(), Fatal> {
    let problems: usize = report.collections.iter().map(crate::verify::CollectionReport::problems).sum();
    let now = bson::DateTime::now();
    let last = doc! {
        "at": now, "host": hostname(), "outcome": if report.in_sync { "in-sync" } else { "differences" },
        "differences": i64::try_from(problems).unwrap_or(i64::MAX), "digest": digest,
    };
    set(sink, doc! { "last_verify": last }).await
}

/// The drift the change-stream follower (issue 14) lists in `mirror_drift`,
/// one document per drifting record: counted by `kind`. Empty when the
/// collection does not exist.
pub const DRIFT: &str = "mirror_drift";

/// Drifting records by kind, and when the oldest was first seen.
async fn drift_counts<T: StateStore>(sink: &T) -> Result<(Document, Option<bson::DateTime>), Fatal> {
    let kinds = sink.drift_kinds().await?;
    let mut counts = std::collections::BTreeMap::<String, i64>::new();
    let oldest = kinds.iter().filter_map(|(_, at)| *at).min();
    for (k, _) in kinds {
        *counts.entry(k).or_default() += 1;
    }
    Ok((counts.into_iter().map(|(k, n)| (k, Bson::Int64(n))).collect(), oldest))
}

/// The `reverse` daemon's record (`_id: "reverse"` in `mirror_state`), without
/// its resume token, with `state` computed from its heartbeat.
async fn reverse_live<T: StateStore>(sink: &T) -> Result<Option<Document>, Fatal> {
    let Some(mut r) = sink.read_state_of(REVERSE_ID).await? else {
        return Ok(None);
    };
    r.remove("_id");
    r.remove("token");
    let beat = r.get_datetime("heartbeat_at").ok().map(|t| age_secs(*t));
    let now = match (r.get_bool("running").unwrap_or(false), beat) {
        (true, Some(age)) if age <= SILENT_AFTER_SECS => "running",
        (true, _) => "silent",
        (false, _) => "stopped",
    };
    r.insert("state", now);
    Ok(Some(r))
}

/// The id of the `reverse` daemon's document in `mirror_state`.
pub const REVERSE_ID: &str = "reverse";

/// The readiness object, exactly as `status --format json` shows it under
/// `readiness`, as JSON: what `GET /progress` serves. One function for both,
/// so they cannot disagree.
pub async fn progress<T: StateStore>(sink: &T) -> Result<serde_json::Value, Fatal> {
    let mut state = read(sink).await?.unwrap_or_default();
    add_live(sink, &mut state).await?;
    let r = state.get_document("readiness").cloned().unwrap_or_default();
    Ok(Bson::Document(r).into_relaxed_extjson())
}

/// watch stopped cleanly.
pub async fn record_stop<T: StateStore>(sink: &T) -> Result<(), Fatal> {
    let now = bson::DateTime::now();
    set(sink, doc! { "watch.running": false, "watch.stopped_at": now, "watch.pending_files": 0_i64 }).await
}

/// A heartbeat older than this means the watch that wrote it is not running
/// (it beats every 5 s; systemd's watchdog restarts a hung one after 60 s).
pub const SILENT_AFTER_SECS: i64 = 30;

/// What `status` shows that is computed when it is asked: the rejects now in
/// `mirror_rejects`, and whether watch is running (from its heartbeat).
pub async fn add_live<T: StateStore>(sink: &T, state: &mut Document) -> Result<(), Fatal> {
    let rejects = sink.count_rejects().await?;
    state.insert("rejects", i64::try_from(rejects).unwrap_or(i64::MAX));
    if let Ok(w) = state.get_document_mut("watch") {
        let beat = w.get_datetime("heartbeat_at").ok().map(|t| age_secs(*t));
        let running = w.get_bool("running").unwrap_or(false);
        let now = match (running, beat) {
            (true, Some(age)) if age <= SILENT_AFTER_SECS => "running",
            (true, _) => "silent",
            (false, _) => "stopped",
        };
        w.insert("state", now);
    }
    let (drift, since) = drift_counts(sink).await?;
    state.insert("drift", drift);
    match since {
        Some(t) => state.insert("drift_first_seen", t),
        None => state.remove("drift_first_seen"),
    };
    if let Some(r) = reverse_live(sink).await? {
        state.insert("reverse", r);
    }
    let readiness = readiness(state);
    state.insert("readiness", readiness);
    Ok(())
}

/// "Can I cut over now?", computed from what `mirror_state` holds (with the
/// live values of [`add_live`]): the phase, how far behind watch is, the last
/// full reconcile and verify, the drift, and every reason that says no.
pub fn readiness(state: &Document) -> Document {
    let watch = state.get_document("watch").ok();
    let watch_state = watch.and_then(|w| w.get_str("state").ok()).unwrap_or("never run");
    let running = watch_state == "running";
    let pending = watch.filter(|_| running).and_then(|w| w.get("pending_files")).and_then(crate::sink::bson_i64);
    let lag = watch.filter(|_| running).and_then(|w| w.get_f64("lag_seconds").ok()).unwrap_or(0.0);
    let rejects = state.get("rejects").and_then(crate::sink::bson_i64).unwrap_or(0);
    let full = state.get_document("last_full_reconcile").ok();
    let cut = cutover_at(state);
    let reversing = state.get_document("reverse").is_ok_and(|r| r.get_str("state") == Ok("running"));
    let phase = match (cut, full) {
        (Some(_), _) if reversing => "reverse",
        (Some(_), _) => "cut-over",
        (None, None) => "initial-sync",
        (None, Some(_)) => "mirroring",
    };
    let drift = state.get_document("drift").cloned().unwrap_or_default();
    let drifting: i64 = drift.iter().filter_map(|(_, n)| crate::sink::bson_i64(n)).sum();
    let mut reasons: Vec<String> = Vec::new();
    if cut.is_some() {
        reasons.push("the migration was already cut over".into());
    }
    if full.is_none() {
        reasons.push("no full reconcile has finished yet (run sync, or start watch)".into());
    }
    if pending.unwrap_or(0) > 0 || lag > 0.0 {
        reasons.push(format!("watch has {} changed file(s) not yet applied ({lag:.1} s behind)", pending.unwrap_or(0)));
    }
    if watch_state == "silent" {
        reasons.push("watch stopped sending heartbeats (killed or hung?): changes may not be mirrored".into());
    }
    if rejects > 0 {
        reasons.push(format!("{rejects} record(s) cannot be mirrored (mirror_rejects): fix them in the files"));
    }
    if drifting > 0 {
        reasons.push(format!(
            "{drifting} record(s) differ between the files and MongoDB (mirror_drift): let them converge or fix them"
        ));
    }
    let verify = state.get_document("last_verify").ok();
    doc! {
        "phase": phase,
        "watch": watch_state,
        "pending_files": pending.unwrap_or(0),
        "lag_seconds": lag,
        "rejects": rejects,
        "drift": drift,
        "last_full_reconcile_at": full.and_then(|f| f.get("at")).cloned().unwrap_or(Bson::Null),
        "last_full_reconcile_mode": full.and_then(|f| f.get("mode")).cloned().unwrap_or(Bson::Null),
        "last_verify_at": verify.and_then(|v| v.get("at")).cloned().unwrap_or(Bson::Null),
        "last_verify_outcome": verify.and_then(|v| v.get("outcome")).cloned().unwrap_or(Bson::Null),
        "can_cut_over": reasons.is_empty(),
        "reasons": reasons,
    }
}

fn age_secs(t: bson::DateTime) -> i64 {
    (bson::DateTime::now().timestamp_millis() - t.timestamp_millis()) / 1000
}

pub async fn read<T: StateStore>(sink: &T) -> Result<Option<Document>, Fatal> {
    sink.read_state().await
}

/// A time and how long ago it was, or "never".
fn ago(b: Option<&Bson>) -> String {
    match b {
        Some(Bson::DateTime(t)) => {
            format!("{} ({} s ago)", t.try_to_rfc3339_string().unwrap_or_default(), age_secs(*t))
        }
        _ => "never".to_string(),
    }
}

/// What watch is doing, from its heartbeat.
fn watch_line(w: &Document) -> String {
    let host = w.get_str("host").unwrap_or("?");
    let pid = w.get("pid").map(|p| p.to_string()).unwrap_or_default();
    match w.get_str("state").unwrap_or("?") {
        "running" => format!(
            "running on {host} (pid {pid}), heartbeat {}; {} file(s) pending, {:.1} s behind",
            ago(w.get("heartbeat_at")),
            w.get("pending_files").map(|p| p.to_string()).unwrap_or_else(|| "0".into()),
            w.get_f64("lag_seconds").unwrap_or(0.0),
        ),
        "silent" => format!("NOT RUNNING: no heartbeat from {host} (pid {pid}) since {}", ago(w.get("heartbeat_at"))),
        _ => format!("stopped {}", ago(w.get("stopped_at"))),
    }
}

/// `docmirror status` for people.
pub fn render_text(d: &Document, database: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "docmirror state in database {database}");
    if let Ok(r) = d.get_document("readiness") {
        let reasons: Vec<&str> =
            r.get_array("reasons").map(|a| a.iter().filter_map(|b| b.as_str()).collect()).unwrap_or_default();
        let verdict = if reasons.is_empty() {
            "yes (run `docmirror cutover`)".to_string()
        } else {
            format!("no: {}", reasons.join("; "))
        };
        let _ = writeln!(out, "  phase:         {}; can cut over: {verdict}", r.get_str("phase").unwrap_or("?"));
    }
    if let Some(at) = cutover_at(d) {
        let _ = writeln!(out, "  cutover:       {}; the files are no longer mirrored", ago(Some(&Bson::DateTime(at))));
    }
    if let Ok(w) = d.get_document("watch") {
        let _ = writeln!(out, "  watch:         {}", watch_line(w));
    }
    let _ = writeln!(
        out,
        "  last run:      {} on {} (pid {}), version {}, updated {}",
        d.get_str("mode").unwrap_or("?"),
        d.get_str("host").unwrap_or("?"),
        d.get("pid").map(|p| p.to_string()).unwrap_or_default(),
        d.get_str("version").unwrap_or("?"),
        ago(d.get("updated_at"))
    );
    if let Ok(f) = d.get_document("last_full_reconcile") {
        let num = |k: &str| f.get(k).map(|v| v.to_string()).unwrap_or_else(|| "0".into());
        let _ = writeln!(
            out,
            "  full reconcile: {} by {}, {:.1} s: read {}, inserted {}, updated {}, unchanged {}, rejected {}, archived {}, deleted {}",
            ago(f.get("at")),
            f.get_str("mode").unwrap_or("?"),
            f.get_f64("seconds").unwrap_or(0.0),
            num("read"),
            num("inserted"),
            num("updated"),
            num("unchanged"),
            num("rejected"),
            num("archived"),
            num("deleted")
        );
    }
    if let Ok(lc) = d.get_document("last_change") {
        for (c, t) in lc {
            let _ = writeln!(out, "  last change:   {c}: {}", ago(Some(t)));
        }
    }
    if let Ok(docs) = d.get_document("documents") {
        let list: Vec<String> = docs.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(out, "  documents:     {}", list.join(", "));
    }
    let _ = writeln!(out, "  rejects:       {}", d.get("rejects").map(|v| v.to_string()).unwrap_or_else(|| "0".into()));
    extra_lines(&mut out, d);
    out
}

/// The last verify, the drift and the reverse daemon, for `status`.
fn extra_lines(out: &mut String, d: &Document) {
    use std::fmt::Write;
    match d.get_document("last_verify") {
        Ok(v) => {
            let _ = writeln!(
                out,
                "  last verify:   {}: {} ({} difference(s))",
                ago(v.get("at")),
                v.get_str("outcome").unwrap_or("?"),
                v.get("differences").map(|n| n.to_string()).unwrap_or_else(|| "?".into())
            );
        }
        Err(_) => {
            let _ = writeln!(out, "  last verify:   never");
        }
    }
    let drift: Vec<String> =
        d.get_document("drift").map(|k| k.iter().map(|(k, n)| format!("{k} {n}")).collect()).unwrap_or_default();
    let since =
        d.get("drift_first_seen").map(|t| format!("; the oldest first seen {}", ago(Some(t)))).unwrap_or_default();
    let _ = writeln!(
        out,
        "  drift:         {}{since}",
        if drift.is_empty() { "none".to_string() } else { drift.join(", ") }
    );
    if let Ok(r) = d.get_document("reverse") {
        let _ = writeln!(
            out,
            "  reverse:       {} into {} on {}; last flush {}",
            r.get_str("state").unwrap_or("?"),
            r.get_str("out").unwrap_or("?"),
            r.get_str("host").unwrap_or("?"),
            ago(r.get("flushed_at"))
        );
    }
}

/// This database's mirror id: a random value stored once in `mirror_state`,
/// which a checkpoint must carry to be used here (a checkpoint copied from
/// another database is not a proof about this one).
pub async fn database_id(sink: &Sink) -> Result<String, Fatal> {
    for _ in 0..2 {
        if let Some(id) = read(sink).await?.as_ref().and_then(|d| d.get_str("database_id").ok()) {
            return Ok(id.to_string());
        }
        let fresh = bson::oid::ObjectId::new().to_hex();
        let op = WriteOp::Update {
            coll: STATE.to_string(),
            filter: doc! { "_id": ID, "database_id": { "$exists": false } },
            update: doc! { "$set": { "database_id": &fresh } },
            upsert: true,
        };
        // Two starting at once: one sets it, the other's upsert collides and reads it.
        let outcome = sink.write(vec![op]).await?;
        if matches!(outcome.first(), Some(crate::reconcile::target::Outcome::Applied { .. })) {
            return Ok(fresh);
        }
    }
    Err(Fatal::Mongo("mirror_state: cannot set the database id".into()))
}
