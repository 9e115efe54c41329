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
    sink_at(db.uri(), Duration::from_secs(20)).await
}

async fn sink_at(uri: String, op_timeout: Duration) -> Sink {
    let opts = SinkOptions {
        uri,
        database: None,
        write_mode: WriteMode::Commands,
        batch_size: 1000,
        concurrency: 2,
        retry_budget: Some(Duration::from_secs(15)),
        op_timeout,
        metrics: Arc::default(),
    };
    Sink::connect(opts, CancellationToken::new()).await.unwrap()
}

fn existing(hash: &str) -> Existing {
    Existing { hash: Some(hash.into()), ..Default::default() }
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

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_refused_as_a_whole_is_split_and_only_the_bad_document_fails() {
    use docmirror::reconcile::target::Outcome;
    use docmirror::sink::WriteOp;
    let db = TestDb::new("target_bisect").await;
    let sink = sink(&db).await;
    // A NUL in a field name cannot even be encoded: the whole command fails
    // before it reaches the server. (Mapping rejects such records earlier;
    // this is the net under it.)
    let ops: Vec<WriteOp> = (0..7)
        .map(|i| {
            let doc = if i == 4 {
                doc! { "_id": format!("d{i}"), "a\u{0}b": 1 }
            } else {
                doc! { "_id": format!("d{i}") }
            };
            WriteOp::Insert { coll: "datasets".into(), doc }
        })
        .collect();
    let outcomes = sink.write(ops).await.unwrap();
    assert_eq!(outcomes.len(), 7);
    for (i, o) in outcomes.iter().enumerate() {
        if i == 4 {
            assert!(matches!(o, Outcome::Failed { .. }), "d4 fails: {o:?}");
        } else {
            assert!(matches!(o, Outcome::Applied { .. }), "d{i} is written: {o:?}");
        }
    }
    assert_eq!(db.count("datasets").await, 6);
}

/// A TCP proxy to the test server that holds every large server reply (a
/// batch of query results) for `delay` before passing it on.
async fn slow_proxy(upstream: String, delay: Duration) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
            });
            tokio::spawn(async move {
                // Whole wire-protocol messages: a little-endian length, then the rest.
                loop {
                    let mut len = [0u8; 4];
                    if sr.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let n = usize::try_from(u32::from_le_bytes(len)).unwrap();
                    let mut msg = vec![0u8; n.saturating_sub(4)];
                    if sr.read_exact(&mut msg).await.is_err() {
                        return;
                    }
                    if n > 100_000 {
                        tokio::time::sleep(delay).await;
                    }
                    if cw.write_all(&len).await.is_err() || cw.write_all(&msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collection_slower_to_list_than_the_operation_timeout_is_still_read() {
    let db = TestDb::new("target_slow_read").await;
    let jobs = db.db.collection::<Document>("training_jobs");
    let docs: Vec<Document> =
        (0..30_050).map(|i| doc! { "_id": format!("j{i:05}"), "_mirror": { "hash": format!("h{i:040}") } }).collect();
    jobs.insert_many(docs).await.unwrap();
    // Each batch of 10,000 results arrives 3 s late: every step is within the
    // 8 s operation timeout (with 5 s to spare for the server's own time on a
    // loaded machine: 2 s were not always enough), the whole listing (three
    // such batches, 9 s) is not.
    let upstream = server_uri().trim_start_matches("mongodb://").trim_end_matches('/').to_string();
    let upstream = upstream.split(['/', '?']).next().unwrap().to_string();
    let port = slow_proxy(upstream, Duration::from_secs(3)).await;
    let uri = format!("mongodb://127.0.0.1:{port}/{}?directConnection=true", db.name);
    let sink = sink_at(uri, Duration::from_secs(8)).await;
    let spec = Layout::builtin().sources.into_iter().find(|s| s.collection == "training_jobs").unwrap();
    let started = std::time::Instant::now();
    let hashes = sink.hashes(&spec).await.expect("the listing is read, batch by batch");
    assert_eq!(hashes.len(), 30_050);
    assert!(started.elapsed() > Duration::from_secs(8), "the proxy did slow the listing past one timeout");
}

/// An update's version condition asks MongoDB for what the core compared: a
/// date not newer than the file's (read, or not read at all), or still no
/// version. Whatever else is there now refuses the write (matched 0), and the
/// core plans it again from a fresh read.
#[tokio::test(flavor = "multi_thread")]
async fn an_update_applies_only_over_the_version_the_core_compared() {
    use docmirror::mapping::{fingerprint, map_record};
    use docmirror::reconcile::scan::Candidate;
    use docmirror::reconcile::target::{Held, Outcome, Write};
    let db = TestDb::new("target_version").await;
    let spec = Layout::builtin().sources.into_iter().find(|s| s.collection == "users").unwrap();
    let sink = sink(&db).await;
    let users = db.db.collection::<Document>("users");
    let date = |s: &str| bson::DateTime::parse_rfc3339_str(s).unwrap();
    let file = user("u1", "a@x.io", "2025-11-01T00:00:00Z");
    let mapped = map_record(&spec, &fingerprint(&spec), &file).unwrap();
    let c = Candidate::unhashed(mapped, "data/users.json", Some(0));
    let older = bson::Bson::DateTime(date("2025-10-01T00:00:00Z"));
    let newer = bson::Bson::DateTime(date("2025-12-01T00:00:00Z"));
    let string = bson::Bson::String("2025-10-01".into());
    let cases = [
        (Held::Unread, Some(older.clone()), 1),
        (Held::Unread, None, 0),
        (Held::Unread, Some(newer.clone()), 0),
        (Held::Unread, Some(string.clone()), 0),
        (Held::Date(date("2025-10-01T00:00:00Z")), Some(older.clone()), 1),
        (Held::Date(date("2025-10-01T00:00:00Z")), Some(newer), 0),
        (Held::Absent, None, 1),
        (Held::Absent, Some(bson::Bson::Null), 1),
        (Held::Absent, Some(older.clone()), 0),
        (Held::Other(Box::new(string.clone())), Some(string), 1),
        (Held::Other(Box::new(bson::Bson::Int64(5))), Some(older), 0),
    ];
    for (held, stored, matched) in cases {
        users.delete_many(doc! {}).await.unwrap();
        let mut d = doc! { "_id": "u1", "email": "a@x.io", "name": "app" };
        if let Some(v) = &stored {
            d.insert("updatedAt", v.clone());
        }
        users.insert_one(d).await.unwrap();
        let was = Existing { version: held.clone(), ..Default::default() };
        let out = Target::write(&sink, &spec, &[Write::Update { c: &c, was: &was }], true).await.unwrap();
        assert_eq!(out, [Outcome::Applied { matched: Some(matched) }], "{held:?} over {stored:?}");
        let name = db.doc("users", "u1").await.unwrap().get_str("name").unwrap().to_string();
        assert_eq!(name == "app", matched == 0, "{held:?} over {stored:?}: name {name}");
    }
}
