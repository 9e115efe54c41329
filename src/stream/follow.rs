//! watch's reader of MongoDB's change stream: every write to a mirrored
//! collection that the mirror did not make goes to the drift [`Tracker`].
//!
//! It starts where the checkpoint of the first reconcile left off, so that
//! nothing written since is missed. A stream outage (a server restart, a
//! failover, the network) is resumed from the last position; a position
//! that no longer resumes, or a drop or rename of a mirrored collection, is
//! told to watch as a reason for a full rescan, and the stream starts again
//! from now. Memory stays bounded: events are handled one at a time, and the
//! tracker keeps at most [`super::drift::PENDING_LIMIT`] writes waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::Bson;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::drift::{Requests, Tracker};
use super::{open, read_event, Events, Pace, Seen, Stream, Unusable};

/// No event for this long (watch's heartbeat writes every 5 s): the stream is stuck.
const SILENCE: Duration = Duration::from_secs(20);

/// Follow the stream until `cancel` fires. `from` is where to start.
pub async fn run(mut tracker: Tracker, from: Bson, requests: Arc<dyn Requests>, cancel: CancellationToken) {
    if let Err(e) = tracker.load().await {
        tracing::info!(error = %e, "Cannot read mirror_drift; drift found before is found again");
    }
    let collections = super::warm::collections(&tracker.engine);
    let mut at = Some(from);
    let mut backoff = Duration::from_millis(500);
    'outer: loop {
        let mut stream: Stream = match open(&tracker.sink, at.as_ref(), Events::Others, Pace::Follow).await {
            Ok(s) => s,
            Err(Unusable::NoStreams(m)) => {
                tracing::info!(reason = %m, "No change streams: drift is found by full rescans and verify only");
                return;
            }
            Err(Unusable::Lost(m)) => {
                requests.full(format!("the change stream cannot resume ({m})"));
                at = None;
                continue;
            }
            Err(Unusable::Failed(m)) => {
                tracing::warn!(reason = %m, retry_in_ms = backoff.as_millis(), "Change stream unavailable; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        tracing::debug!("Following MongoDB's change stream");
        let mut last_event = Instant::now();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break 'outer,
                () = tokio::time::sleep_until(tracker.next_due().min(tokio::time::Instant::now() + Duration::from_secs(1))) => {
                    if let Err(e) = tracker.tick(requests.as_ref()).await {
                        tracing::warn!(error = %e, "Drift check failed; trying again");
                    }
                    // watch writes its heartbeat every few seconds, so a silent
                    // stream is a stuck one (a connection half-open, a server
                    // that lost the position it resumed from): open it again
                    // from the last event seen.
                    if last_event.elapsed() > SILENCE {
                        tracing::info!(silent_s = SILENCE.as_secs(), "The change stream went silent; opening it again from the last event");
                        continue 'outer;
                    }
                }
                // `next` keeps its state in the stream, so losing this race to
                // the tick loses nothing (an abandoned `next_if_any` could).
                ev = stream.next() => match ev.transpose() {
                    Ok(Some(ev)) => {
                        last_event = Instant::now();
                        at = bson::to_bson(&ev.id).ok().or(at);
                        match read_event(&ev, &collections) {
                        Seen::Touched { collection, id, ours: false, .. } => {
                            tracing::debug!(%collection, %id, "Written by someone else");
                            tracker.touched(collection, id, requests.as_ref());
                        }
                        Seen::Broken(what) => {
                            requests.full(format!("the change stream shows a {what}"));
                            at = None;
                            continue 'outer;
                        }
                        _ => {}
                    }},
                    Ok(None) => {}
                    Err(e) => {
                        tracing::info!(error = %e, "Change stream interrupted; resuming from the last event");
                        continue 'outer;
                    }
                },
            }
        }
    }
}
