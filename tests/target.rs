//! The MongoDB sink as a reconcile `Target`, called directly: the outcomes
//! the core relies on, for cases the binary can only reach through a race.

use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Document};
use docmirror::layout::Layout;
use docmirror::reconcile::target::{Existing, Target};
use docmirror::sink::{Sink, SinkOptions, WriteMode};
use tokio_util::sync::CancellationToken;

use crate::support::*;

async fn sink(db: &TestDb) -> Sink {
    let opts = SinkOptions {
        uri: db.uri(),
        database: None,
        write_mode: WriteMode::Commands,
        batch_size: 1000,
        concurrency: 2,
        retry_budget: Some(Duration::from_secs(20)),
        op_timeout: Duration::from_secs(20),
        metrics: Arc::default(),
    };
    Sink::connect(opts, CancellationToken::new()).await.unwrap()
}

fn existing(hash: &str) -> Existing {
    Existing { hash: Some(hash.to_string()), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_that_matched_nothing_is_not_counted_and_leaves_no_archive_copy() {
    let db = TestDb::new("target_delete").await;
    let jobs = db.db.collection::<Document>("training_jobs");
    jobs.insert_one(doc! { "_id": "j1", "_mirror": { "hash": "h-now" } }).await.unwrap();
    jobs.insert_one(doc! { "_id": "j2", "_mirror": { "hash": "h2" } }).await.unwrap();
    let spec = Layout::builtin().sources.into_iter().find(|s| s.collection == "training_jobs").unwrap();
    let sink = sink(&db).await;
    // j1 changed since the core looked (its hash is no longer the one it saw); j2 did not.
    let gone = vec![("j1".to_string(), existing("h-seen")), ("j2".to_string(), existing("h2"))];
    let deleted = sink.delete(&spec, &gone, true).await.unwrap();
    assert_eq!(deleted, [false, true]);
    assert!(db.doc("training_jobs", "j1").await.is_some(), "the changed document stays");
    assert!(db.doc("training_jobs", "j2").await.is_none());
    let archive = db.docs("mirror_archive").await;
    let ids: Vec<&str> = archive.iter().filter_map(|d| d.get_str("doc_id").ok()).collect();
    assert_eq!(ids, ["j2"], "only what was deleted is in the archive");
    // Deleting what is already gone deletes nothing.
    assert_eq!(sink.delete(&spec, &gone[1..], false).await.unwrap(), [false]);
}
