//! watch against a model: random sequences of file operations (writes,
//! rename-over, truncate-then-write, deletes, a mass delete, the jobs folder
//! replaced, a file broken then fixed, users.json rewritten) applied while
//! watch runs. The model is a map of what the files hold, and the rules say
//! what MongoDB must hold at the end:
//!
//! - every record in the files is in MongoDB with the file's content;
//! - deletes are applied until the mass-delete guard holds the rest back
//!   (at most half of the collection within the window); after SIGUSR1
//!   releases them, MongoDB holds exactly the files, and `mirror_rejects`
//!   is empty (the broken file was fixed).
//!
//! `DOCMIRROR_MODEL_CASES` sets the number of sequences (CI: 4; a long run: 100 or more).

use std::collections::BTreeMap;
use std::time::Duration;

use bson::{doc, Document};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::support::*;

const JOBS: usize = 10;

#[derive(Debug, Clone)]
enum Op {
    Write(usize),
    RenameOver(usize),
    TruncateWrite(usize),
    Delete(usize),
    MassDelete,
    ReplaceFolder,
    BrokenThenFixed(usize),
    Users,
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..JOBS + 3;
    prop_oneof![
        4 => k.clone().prop_map(Op::Write),
        3 => k.clone().prop_map(Op::RenameOver),
        2 => k.clone().prop_map(Op::TruncateWrite),
        3 => k.clone().prop_map(Op::Delete),
        1 => Just(Op::MassDelete),
        1 => Just(Op::ReplaceFolder),
        1 => k.prop_map(Op::BrokenThenFixed),
        1 => Just(Op::Users),
    ]
}

fn cases() -> u32 {
    std::env::var("DOCMIRROR_MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(4)
}

/// What the files hold, and what happened to them.
struct Model {
    /// job name → step in its file.
    jobs: BTreeMap<String, i64>,
    users_version: i64,
    /// A version counter: every write is newer than the one before.
    clock: i64,
}

impl Model {
    fn tick(&mut self) -> i64 {
        self.clock += 1;
        self.clock
    }
}

fn name(k: usize) -> String {
    format!("m{k:02}")
}

fn job_json(name: &str, step: i64) -> Value {
    let updated = bson::DateTime::from_millis(1_760_000_000_000 + step * 1000).try_to_rfc3339_string().unwrap();
    let mut j = job(name, "running", &updated);
    j["step"] = json!(step);
    j
}

fn users_json(version: i64) -> Value {
    let updated = bson::DateTime::from_millis(1_760_000_000_000 + version * 1000).try_to_rfc3339_string().unwrap();
    json!([user("u1", "a@x.io", &updated), user("u2", "b@x.io", &updated)])
        .as_array()
        .cloned()
        .map(|mut us| {
            for u in &mut us {
                u["name"] = json!(format!("v{version}"));
            }
            Value::Array(us)
        })
        .unwrap_or_default()
}

fn apply(p: &Platform, m: &mut Model, op: &Op) {
    let rel = |k: usize| format!("artifacts/jobs/{}.json", name(k));
    match op {
        Op::Write(k) | Op::RenameOver(k) | Op::TruncateWrite(k) => {
            let step = m.tick();
            let bytes = serde_json::to_vec_pretty(&job_json(&name(*k), step)).unwrap();
            match op {
                Op::Write(_) => p.write(&rel(*k), &bytes),
                Op::RenameOver(_) => p.write_by_rename(&rel(*k), &bytes),
                _ => {
                    // Truncate, then write in two parts: a reader may see any prefix.
                    p.write(&rel(*k), b"");
                    std::thread::sleep(Duration::from_millis(5));
                    p.write(&rel(*k), &bytes[..bytes.len() / 2]);
                    std::thread::sleep(Duration::from_millis(5));
                    p.write(&rel(*k), &bytes);
                }
            }
            m.jobs.insert(name(*k), step);
        }
        Op::Delete(k) => {
            if m.jobs.remove(&name(*k)).is_some() {
                p.remove(&rel(*k));
            }
        }
        Op::MassDelete => {
            for n in std::mem::take(&mut m.jobs).into_keys() {
                p.remove(&format!("artifacts/jobs/{n}.json"));
            }
        }
        Op::ReplaceFolder => {
            // A new folder with the same files, renamed into place; the old one moved aside.
            let new = p.path("artifacts/jobs.new");
            std::fs::create_dir_all(&new).unwrap();
            for (n, step) in &m.jobs {
                std::fs::write(new.join(format!("{n}.json")), serde_json::to_vec_pretty(&job_json(n, *step)).unwrap())
                    .unwrap();
            }
            let aside = p.path(&format!("artifacts/jobs.old{}", m.tick()));
            std::fs::rename(p.path("artifacts/jobs"), aside).unwrap();
            std::fs::rename(&new, p.path("artifacts/jobs")).unwrap();
            p.settle();
        }
        Op::BrokenThenFixed(k) => {
            p.write(&rel(*k), b"{\"job_id\": \"broken");
            std::thread::sleep(Duration::from_millis(30));
            let step = m.tick();
            p.write(&rel(*k), serde_json::to_vec_pretty(&job_json(&name(*k), step)).unwrap());
            m.jobs.insert(name(*k), step);
        }
        Op::Users => {
            m.users_version = m.tick();
            p.users(&users_json(m.users_version));
        }
    }
}

/// What MongoDB holds of the jobs: name → step.
async fn held(db: &TestDb) -> BTreeMap<String, i64> {
    db.docs("training_jobs")
        .await
        .iter()
        .filter_map(|d| {
            Some((
                d.get_str("_id").ok()?.to_string(),
                d.get("step").and_then(|s| s.as_i64().or(s.as_i32().map(i64::from)))?,
            ))
        })
        .collect()
}

async fn users_agree(db: &TestDb, version: i64) -> bool {
    let want = format!("v{version}");
    let docs = db.docs("users").await;
    docs.len() == 2 && docs.iter().all(|d| d.get_str("name") == Ok(want.as_str()))
}

async fn run_case(db: &TestDb, ops: &[Op]) -> Result<(), String> {
    let p = Platform::new();
    let mut m = Model { jobs: BTreeMap::new(), users_version: 0, clock: 0 };
    p.users(&users_json(0));
    for k in 0..JOBS {
        apply(&p, &mut m, &Op::Write(k));
    }
    let w = WatchProc::start(&db.uri(), &p, &["--on-delete", "delete"]).await;
    for op in ops {
        apply(&p, &mut m, op);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Rule 1: every record in the files arrives with the file's content, and
    // the guard never lets more than half of what existed go.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let h = held(db).await;
        let arrived = m.jobs.iter().all(|(n, s)| h.get(n) == Some(s)) && users_agree(db, m.users_version).await;
        // The guard: deletes within the window never exceed half of the
        // collection as it was when the window began, i.e. the documents
        // deleted (`D`) never outnumber those left (`H`), but for one.
        let deleted = w.log_text().matches("Record gone from the files").count();
        if deleted > h.len() + 1 {
            return Err(format!("{deleted} deleted, {} left: the guard let a mass delete through ({ops:?})", h.len()));
        }
        if arrived && h.len() >= m.jobs.len() {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("files {:?} never arrived; MongoDB holds {h:?} ({ops:?})", m.jobs));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Rule 2: once the operator releases held deletes, MongoDB is exactly the files.
    let pid = w.child.id().expect("watch running").to_string();
    assert!(std::process::Command::new("kill").args(["-USR1", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let h = held(db).await;
        let rejects = db.rejects().await;
        if h == m.jobs && rejects.is_empty() && users_agree(db, m.users_version).await {
            break;
        }
        if std::time::Instant::now() > deadline {
            let codes: Vec<&str> = rejects.iter().filter_map(|r| r.get_str("reason_code").ok()).collect();
            return Err(format!(
                "after SIGUSR1 MongoDB holds {h:?}, the files {:?}, rejects {codes:?} ({ops:?})",
                m.jobs
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.stop().await;
    Ok(())
}

#[test]
fn watch_ends_where_the_model_of_the_rules_says() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let db = rt.block_on(TestDb::new("model"));
    // Each case runs watch for seconds: shrink a few steps only.
    let config = Config { cases: cases(), failure_persistence: None, max_shrink_iters: 16, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), 1..14), |ops| {
        rt.block_on(async {
            for c in ["users", "training_jobs", "mirror_rejects", "mirror_archive", "mirror_state"] {
                db.db.collection::<Document>(c).delete_many(doc! {}).await.unwrap();
            }
            run_case(&db, &ops).await
        })
        .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
