//! MongoDB's side of the mirror (issue 14): change streams, the checkpoint
//! a start resumes from, and the drift watch sees while it runs.
//!
//! - [`checkpoint`]: what a full reconcile proved, stored in MongoDB;
//! - [`warm`]: a start that checks only what changed since a checkpoint;
//! - [`follow`]: watch's reader of the stream, which feeds [`drift`];
//! - this module: opening a stream on the mirror's database and reading what
//!   it says, with the reasons a stream cannot be used told apart.
//!
//! Everything here is MongoDB-only: a target without change streams gets a
//! full reconcile on every start, as before.

pub mod checkpoint;
pub mod drift;
pub mod follow;
pub mod memo_codec;
pub mod proof;
pub mod spill;
pub mod tail;
pub mod warm;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bson::{Bson, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::error::ErrorKind;

use crate::sink::Sink;

/// A stream on the mirror's database.
pub type Stream = ChangeStream<ChangeStreamEvent<Document>>;

/// Why a stream cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// The server has no change streams (a standalone `mongod`).
    NoStreams(String),
    /// The stored position no longer resumes (history lost, a bad token).
    Lost(String),
    /// The server could not be asked (unreachable past the budget).
    Failed(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::NoStreams(m) => write!(f, "the server has no change streams ({m})"),
            Unusable::Lost(m) => write!(f, "the stored change-stream position no longer resumes ({m})"),
            Unusable::Failed(m) => write!(f, "the change stream failed ({m})"),
        }
    }
}

/// Server error codes that mean "no change streams here".
const NO_STREAMS: [i32; 2] = [40573, 40324];

fn classify(e: &mongodb::error::Error, scrub: &dyn Fn(&str) -> String) -> Unusable {
    let text = scrub(&e.to_string());
    match e.kind.as_ref() {
        ErrorKind::Command(c) if NO_STREAMS.contains(&c.code) => Unusable::NoStreams(text),
        ErrorKind::Command(_) => Unusable::Lost(text),
        _ if text.contains("only supported on replica sets") => Unusable::NoStreams(text),
        _ => Unusable::Failed(text),
    }
}

/// Which events a stream delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Events {
    /// Every event (a start replays everything since its checkpoint), but
    /// the checkpoint's own parts.
    All,
    /// All but the mirror's own inserts and updates (they carry `_mirror`),
    /// filtered on the server: a run that wrote 100,000 documents does not
    /// read them back. An own write that slips through counts as someone
    /// else's, which costs a recheck, never a miss.
    Others,
}

fn not_ours() -> Document {
    bson::doc! { "$match": { "$nor": [
        { "operationType": "insert", "fullDocument._mirror": { "$exists": true } },
        { "operationType": "update", "updateDescription.updatedFields._mirror": { "$exists": true } },
    ] } }
}

/// Not the checkpoint's own parts (a save writes megabytes of them, after
/// the position it stores; a start would read them all back), but its fence.
fn not_checkpoint_parts() -> Document {
    bson::doc! { "$match": { "$nor": [
        { "ns.coll": checkpoint::CHECKPOINTS, "documentKey._id": { "$ne": "fence" } },
    ] } }
}

/// Events per reply: a bound on what one read holds (an event of a large
/// record can be a few hundred kB).
const BATCH: u32 = 1_000;

/// How long the server may hold a read of a stream that has nothing new:
/// short for reads that must end soon (catching up to a fence), long for the
/// readers that follow a stream for a while (each empty answer costs the
/// server a scan; the Python test server notices 20 a second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    CatchUp,
    Follow,
}

/// Open a stream on the database, from `resume` or from now.
pub async fn open(sink: &Sink, resume: Option<&Bson>, events: Events, pace: Pace) -> Result<Stream, Unusable> {
    let token = match resume {
        Some(b) => Some(
            bson::from_bson::<ResumeToken>(b.clone()).map_err(|e| Unusable::Lost(format!("unreadable token: {e}")))?,
        ),
        None => None,
    };
    let scrub = |s: &str| sink.scrub(s);
    let mut last = None;
    for attempt in 0..3u32 {
        let wait = Duration::from_millis(if pace == Pace::Follow { 1_000 } else { 50 });
        let mut w = sink.database().watch().max_await_time(wait).batch_size(BATCH);
        w = match events {
            Events::Others => w.pipeline([not_checkpoint_parts(), not_ours()]),
            Events::All => w.pipeline([not_checkpoint_parts()]),
        };
        if let Some(t) = &token {
            w = w.resume_after(t.clone());
        }
        match w.await {
            Ok(s) => return Ok(s),
            Err(e) => {
                let u = classify(&e, &scrub);
                if !matches!(u, Unusable::Failed(_)) || !crate::sink::is_transient(&e) {
                    return Err(u);
                }
                last = Some(u);
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| Unusable::Failed("no attempt made".into())))
}

/// The stream's position as a value to store.
pub fn position(stream: &Stream) -> Option<Bson> {
    stream.resume_token().and_then(|t| bson::to_bson(&t).ok())
}

/// A position from now on: what a full reconcile stores, taken before its
/// reads. A stream opened "now" may start a little before now: SecantusDB
/// starts it at its oldest write still in flight, anywhere on the server, so
/// a drop committed before the open could still follow the position, and
/// every start from the checkpoint would see it and reconcile in full. So a
/// fence is written and the stream read up to it, whatever comes first: all
/// of that was committed before the fence, hence before the reads; the
/// position is the fence's.
pub async fn position_now(sink: &Sink) -> Result<Bson, Unusable> {
    let mut stream = open(sink, None, Events::All, Pace::CatchUp).await?;
    let n = fence(sink).await.map_err(|e| Unusable::Failed(format!("cannot write the fence: {e}")))?;
    let deadline = tokio::time::Instant::now() + FENCE_WAIT;
    loop {
        let ev = match next_by(&mut stream, deadline).await {
            Ok(Some(ev)) => ev,
            Err(e) => return Err(classify(&e, &|s: &str| sink.scrub(s))),
            Ok(None) => {
                return Err(Unusable::Failed(format!(
                    "the change stream did not reach its fence within {FENCE_WAIT:?}"
                )))
            }
        };
        if is_fence(&ev, &n) {
            return bson::to_bson(&ev.id).map_err(|e| Unusable::Failed(format!("unreadable resume token: {e}")));
        }
    }
}

/// What one event says, for the mirror.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A document of a mirrored collection was written or deleted.
    Touched { collection: String, id: String, ours: bool, deleted: bool },
    /// A mirrored collection (or the database) was dropped or renamed, or the
    /// stream invalidated: what it said before cannot be trusted to be complete.
    Broken(String),
    /// Something the mirror does not care about.
    Other,
}

/// What an event means for the mirrored `collections`. `ours` tells the
/// mirror's own writes apart: they always set `_mirror` (an insert carries
/// it, an update changes `_mirror.hash`); the app's and operators' do not.
pub fn read_event(ev: &ChangeStreamEvent<Document>, collections: &HashSet<String>) -> Seen {
    let coll = ev.ns.as_ref().and_then(|n| n.coll.clone());
    let mirrored = coll.as_ref().is_some_and(|c| collections.contains(c));
    match &ev.operation_type {
        OperationType::Insert | OperationType::Update | OperationType::Replace | OperationType::Delete => {
            let (Some(collection), true) = (coll, mirrored) else { return Seen::Other };
            let Some(id) = ev.document_key.as_ref().and_then(|k| k.get("_id")).map(id_string) else {
                return Seen::Other;
            };
            let ours = match &ev.operation_type {
                OperationType::Insert => {
                    ev.full_document.as_ref().is_some_and(|d| d.contains_key(crate::layout::MIRROR_FIELD))
                }
                OperationType::Update => ev.update_description.as_ref().is_some_and(|u| {
                    u.updated_fields.keys().any(|k| k == crate::layout::MIRROR_FIELD || k.starts_with("_mirror."))
                }),
                _ => false,
            };
            Seen::Touched { collection, id, ours, deleted: ev.operation_type == OperationType::Delete }
        }
        OperationType::Drop | OperationType::Rename if mirrored => {
            Seen::Broken(format!("{} {}", op_name(&ev.operation_type), coll.unwrap_or_default()))
        }
        OperationType::DropDatabase | OperationType::Invalidate => {
            Seen::Broken(op_name(&ev.operation_type).to_string())
        }
        _ => Seen::Other,
    }
}

fn op_name(op: &OperationType) -> &str {
    match op {
        OperationType::Drop => "drop of",
        OperationType::Rename => "rename of",
        OperationType::DropDatabase => "dropDatabase",
        OperationType::Invalidate => "invalidate",
        _ => "change",
    }
}

pub use crate::sink::target::id_string;

/// Everything the stream says happened to the mirrored collections from its
/// position until now, by collection: the ids touched (by anyone).
#[derive(Debug, Default)]
pub struct Touched {
    pub ids: HashMap<String, HashSet<String>>,
    pub events: u64,
}

impl Touched {
    pub fn len(&self) -> usize {
        self.ids.values().map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Write a fence: a change to `mirror_checkpoint` with a fresh value, after
/// which a [`drain`] stops. Whatever happened before it was written is in
/// the stream before it, on every server, whatever the server does with the
/// position of events a filter dropped.
pub async fn fence(sink: &Sink) -> Result<String, crate::error::Fatal> {
    let n = bson::oid::ObjectId::new().to_hex();
    write_fence(sink, &n).await?;
    Ok(n)
}

/// Write a fence with this value (a reader told the value first cannot miss it).
pub async fn write_fence(sink: &Sink, n: &str) -> Result<(), crate::error::Fatal> {
    let op = crate::sink::WriteOp::Update {
        coll: checkpoint::CHECKPOINTS.into(),
        filter: bson::doc! { "_id": "fence" },
        update: bson::doc! { "$set": { "n": n } },
        upsert: true,
    };
    sink.write(vec![op]).await?;
    Ok(())
}

pub fn is_fence(ev: &ChangeStreamEvent<Document>, n: &str) -> bool {
    let coll = ev.ns.as_ref().and_then(|ns| ns.coll.as_deref());
    if coll != Some(checkpoint::CHECKPOINTS) {
        return false;
    }
    let set = ev.update_description.as_ref().and_then(|u| u.updated_fields.get_str("n").ok());
    let full = ev.full_document.as_ref().and_then(|d| d.get_str("n").ok());
    set == Some(n) || full == Some(n)
}

/// The stream's next event, or `None` once `deadline` passes first.
async fn next_by(
    stream: &mut Stream,
    deadline: tokio::time::Instant,
) -> Result<Option<ChangeStreamEvent<Document>>, mongodb::error::Error> {
    loop {
        match tokio::time::timeout_at(deadline, stream.next_if_any()).await {
            Ok(Ok(Some(ev))) => return Ok(Some(ev)),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(None),
        }
    }
}

/// How long a drain waits for its fence before giving up.
pub const FENCE_WAIT: Duration = Duration::from_secs(60);

/// Read the stream up to the fence `n` (see [`fence`]): the ids it shows
/// touched. More than `limit` ids, a broken stream, or no fence in time is
/// an `Err` with the reason: the caller then reconciles in full.
pub async fn drain(
    stream: &mut Stream,
    collections: &HashSet<String>,
    limit: usize,
    n: &str,
) -> Result<Touched, String> {
    let mut touched = Touched::default();
    let deadline = tokio::time::Instant::now() + FENCE_WAIT;
    loop {
        let ev = match next_by(stream, deadline).await {
            Ok(Some(ev)) => ev,
            Err(e) => return Err(format!("the change stream failed while catching up: {e}")),
            Ok(None) => return Err(format!("the change stream did not reach its fence within {FENCE_WAIT:?}")),
        };
        touched.events += 1;
        match read_event(&ev, collections) {
            Seen::Touched { collection, id, .. } => {
                touched.ids.entry(collection).or_default().insert(id);
                if touched.len() > limit {
                    return Err(format!("more than {limit} documents changed since the checkpoint"));
                }
            }
            Seen::Broken(what) => return Err(format!("the change stream shows a {what}")),
            Seen::Other if is_fence(&ev, n) => return Ok(touched),
            Seen::Other => {}
        }
    }
}
