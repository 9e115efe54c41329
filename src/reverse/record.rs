//! `reverse`'s own record in `mirror_state` (`_id: "reverse"`): the resume
//! token it stored after its last flush, the folder it writes, and a
//! heartbeat that `status` and `/progress` read.

use std::path::Path;

use bson::{doc, Document};
use mongodb::change_stream::event::ResumeToken;

use crate::export::Exported;
use crate::sink::{Sink, SinkError, WriteOp};
use crate::state::{hostname, REVERSE_ID, STATE};

/// Running totals, kept in the record.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub flushes: u64,
    pub written: u64,
    pub removed: u64,
}

impl Totals {
    pub fn add(&mut self, e: &Exported) {
        self.flushes += 1;
        self.written += e.written;
        self.removed += e.removed;
    }

    fn doc(self) -> Document {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        doc! { "flushes": n(self.flushes), "files_written": n(self.written), "files_removed": n(self.removed) }
    }
}

async fn set(sink: &Sink, fields: Document) -> Result<(), SinkError> {
    let op = WriteOp::Update {
        coll: STATE.to_string(),
        filter: doc! { "_id": REVERSE_ID },
        update: doc! { "$set": fields },
        upsert: true,
    };
    sink.write(vec![op]).await.map(|_| ())
}

/// The token stored by a reverse that wrote into `out`, if any (a token
/// stored for another folder says nothing about this one's files).
pub async fn load_token(sink: &Sink, out: &Path) -> Result<Option<ResumeToken>, SinkError> {
    let found = sink.find_all(STATE, doc! { "_id": REVERSE_ID }, None).await?.into_iter().next();
    let Some(d) = found else { return Ok(None) };
    if d.get_str("out") != Ok(out.display().to_string().as_str()) {
        return Ok(None);
    }
    Ok(d.get("token").cloned().and_then(|t| bson::from_bson::<ResumeToken>(t).ok()))
}

/// Forget the stored token (it no longer resumes, or polling replaced the stream).
pub async fn drop_token(sink: &Sink) -> Result<(), SinkError> {
    let op = WriteOp::Update {
        coll: STATE.to_string(),
        filter: doc! { "_id": REVERSE_ID },
        update: doc! { "$unset": { "token": "" } },
        upsert: false,
    };
    sink.write(vec![op]).await.map(|_| ())
}

/// A heartbeat; with `token`, after a flush that covered every change up to it.
pub async fn beat(
    sink: &Sink,
    out: &Path,
    mode: &str,
    token: Option<&ResumeToken>,
    totals: Totals,
    flushed: bool,
) -> Result<(), SinkError> {
    let now = bson::DateTime::now();
    let mut fields = doc! {
        "out": out.display().to_string(), "mode": mode, "running": true, "host": hostname(),
        "pid": i64::from(std::process::id()), "heartbeat_at": now, "version": env!("CARGO_PKG_VERSION"),
        "totals": totals.doc(),
    };
    if flushed {
        fields.insert("flushed_at", now);
    }
    if let Some(t) = token {
        let b = bson::to_bson(t).map_err(|e| SinkError::Permanent(format!("cannot store the resume token: {e}")))?;
        fields.insert("token", b);
        fields.insert("token_at", now);
    }
    set(sink, fields).await
}

/// reverse stopped cleanly.
pub async fn stopped(sink: &Sink) -> Result<(), SinkError> {
    set(sink, doc! { "running": false, "stopped_at": bson::DateTime::now() }).await
}
