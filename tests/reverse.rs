//! `docmirror reverse`: after the cutover, MongoDB's changes reach the
//! platform's files in a folder of its own; a restart resumes from the stored
//! token; the app's own login works on the files; and it refuses what it must.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bson::{doc, Document};
use serde_json::{json, Value};

use crate::support::*;

const T: &str = "2025-10-01T08:30:00.123Z";

/// A running `docmirror reverse`, its log in a file.
struct Reverse {
    child: tokio::process::Child,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Reverse {
    fn spawn(uri: &str, p: &Platform, out: &Path, args: &[&str]) -> Reverse {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("reverse.log");
        let debounce: &[&str] = if args.contains(&"--debounce-ms") { &[] } else { &["--debounce-ms", "100"] };
        let child = command(uri, p)
            .args(["reverse", "--out"])
            .arg(out)
            .args(debounce)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Reverse { child, log, _logdir: logdir }
    }

    /// Start it and wait until it follows the change stream.
    async fn start(uri: &str, p: &Platform, out: &Path, args: &[&str]) -> Reverse {
        let r = Reverse::spawn(uri, p, out, args);
        r.wait_for("Following MongoDB's change stream").await;
        r
    }

    async fn wait_for(&self, line: &str) {
        let log = self.log.clone();
        eventually(60, line, || {
            let log = log.clone();
            async move { std::fs::read_to_string(&log).unwrap_or_default().contains(line) }
        })
        .await;
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert_no_secrets(&text);
        text
    }

    /// SIGTERM, then a clean exit (0).
    async fn stop(mut self) -> String {
        let pid = self.child.id().expect("reverse already exited");
        assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
        let exit = tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait()).await.unwrap().unwrap();
        let log = self.log_text();
        assert_eq!(exit.code(), Some(0), "{log}");
        assert!(log.contains("Stopped"), "{log}");
        log
    }

    /// SIGKILL, as a crash would.
    async fn crash(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Every file below `dir`, by path below it, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.insert(path.strip_prefix(root).unwrap().display().to_string(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// What `export` writes for MongoDB as it is now: the exact files reverse must reach.
async fn exported(db: &TestDb, p: &Platform) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let run = docmirror(db, p, &["export", "--out", dir.path().to_str().unwrap(), "--overwrite"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    tree(dir.path())
}

/// Wait until `out` holds exactly what an export of MongoDB holds now.
async fn until_exact(db: &TestDb, p: &Platform, out: &Path) {
    let want = exported(db, p).await;
    let what = format!("{} to hold exactly the export of MongoDB", out.display());
    eventually(120, &what, || {
        let ok = tree(out) == want;
        async move { ok }
    })
    .await;
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A synced, cut-over platform: two users, one dataset, two jobs.
async fn cut_over(db: &TestDb) -> Platform {
    let p = Platform::new();
    let mut u1 = user("u1", "a@x.io", T);
    u1["password"] = json!("correct-horse-plain");
    p.users(&json!([u1, user("u2", "b@x.io", T)]));
    p.datasets(&json!([dataset("d1", 7)]));
    p.job("job_2025_j1", &job("j1", "running", T));
    p.job("j2", &job("j2", "queued", T));
    assert_eq!(docmirror(db, &p, &["sync"]).await.code, 0);
    let run = docmirror(db, &p, &["cutover", "--quiet-secs", "0"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn inserts_updates_and_deletes_in_mongodb_reach_the_files() {
    let db = TestDb::new("reverse_changes").await;
    let p = cut_over(&db).await;
    let out = tempfile::tempdir().unwrap();
    // A job file in the folder whose document does not exist (any more).
    std::fs::create_dir_all(out.path().join("artifacts/jobs")).unwrap();
    std::fs::write(out.path().join("artifacts/jobs/stale.json"), br#"{"job_id": "stale"}"#).unwrap();
    let r = Reverse::start(&db.uri(), &p, out.path(), &[]).await;
    // The first start compares every file: the export's files, job file names kept, the stale one gone.
    until_exact(&db, &p, out.path()).await;
    assert!(out.path().join("artifacts/jobs/job_2025_j1.json").is_file());
    assert!(r.log_text().contains("No stored resume token for this folder: comparing every file"));

    let (users, jobs) = (db.db.collection::<Document>("users"), db.db.collection::<Document>("training_jobs"));
    let login = bson::DateTime::parse_rfc3339_str("2025-11-02T10:00:00.5Z").unwrap();
    users.update_one(doc! {"_id": "u2"}, doc! {"$set": {"lastLoginAt": login}}).await.unwrap();
    users.insert_one(doc! {"_id": "u3", "id": "u3", "email": "c@x.io", "password": HASH_B}).await.unwrap();
    jobs.update_one(doc! {"_id": "j1"}, doc! {"$set": {"status": "completed"}}).await.unwrap();
    jobs.insert_one(doc! {"_id": "j9", "job_id": "j9", "status": "queued"}).await.unwrap();
    jobs.delete_one(doc! {"_id": "j2"}).await.unwrap();
    until_exact(&db, &p, out.path()).await;
    let u = read(&out.path().join("data/users.json"));
    assert_eq!(u[1]["lastLoginAt"], "2025-11-02T10:00:00.500Z", "{u}");
    assert_eq!(u[2]["email"], "c@x.io", "{u}");
    assert_eq!(read(&out.path().join("artifacts/jobs/job_2025_j1.json"))["status"], "completed");
    assert_eq!(read(&out.path().join("artifacts/jobs/j9.json"))["job_id"], "j9");
    assert!(!out.path().join("artifacts/jobs/j2.json").exists(), "a deleted job's file is removed");
    // A user deleted in MongoDB leaves users.json.
    users.delete_one(doc! {"_id": "u3"}).await.unwrap();
    until_exact(&db, &p, out.path()).await;
    assert_eq!(read(&out.path().join("data/users.json")).as_array().unwrap().len(), 2);
    // status: the phase is reverse while it runs, and its record shows.
    let run = docmirror(&db, &p, &["status", "--format", "json"]).await;
    let status: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(status["readiness"]["phase"], "reverse", "{status}");
    assert_eq!(status["reverse"]["state"], "running", "{status}");
    assert!(status["reverse"].get("token").is_none(), "the token is not shown");
    let text = docmirror(&db, &p, &["status"]).await.stdout;
    assert!(
        text.contains(&format!("reverse:       running into {}", out.path().canonicalize().unwrap().display())),
        "{text}"
    );
    let log = r.stop().await;
    assert!(!log.contains(" ERROR "), "{log}");
    let status = docmirror(&db, &p, &["status", "--format", "json"]).await.stdout;
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        (status["readiness"]["phase"].clone(), status["reverse"]["state"].clone()),
        (json!("cut-over"), json!("stopped"))
    );
    // No temporary file is left behind, and nothing was written outside the folder
    // (the platform's own tree is checked when `p` is dropped).
    assert!(tree(out.path()).keys().all(|k| !k.contains(".tmp")), "{:?}", tree(out.path()).keys());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_a_thousand_updates_ends_with_exact_files() {
    let db = TestDb::new("reverse_burst").await;
    let p = cut_over(&db).await;
    let out = tempfile::tempdir().unwrap();
    let r = Reverse::start(&db.uri(), &p, out.path(), &[]).await;
    let (users, jobs) = (db.db.collection::<Document>("users"), db.db.collection::<Document>("training_jobs"));
    for i in 0..1000_i32 {
        if i % 2 == 0 {
            users.update_one(doc! {"_id": format!("u{}", 1 + i % 4 / 2)}, doc! {"$set": {"n": i}}).await.unwrap();
        } else {
            jobs.update_one(doc! {"_id": format!("j{}", 1 + i % 4 / 2)}, doc! {"$set": {"step": i}}).await.unwrap();
        }
    }
    until_exact(&db, &p, out.path()).await;
    assert_eq!(read(&out.path().join("artifacts/jobs/j2.json"))["step"], 999);
    assert_eq!(read(&out.path().join("data/users.json"))[1]["n"], 998);
    // The changes were written per debounce period, not once per event.
    let state = db.doc("mirror_state", "reverse").await.unwrap();
    let flushes = state.get_document("totals").unwrap().get_i64("flushes").unwrap();
    assert!(flushes < 1000, "{flushes} flushes for 1,000 updates");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_within_a_debounce_period_are_written_once_and_sigterm_writes_what_is_pending() {
    let db = TestDb::new("reverse_debounce").await;
    let p = cut_over(&db).await;
    let out = tempfile::tempdir().unwrap();
    // A debounce period far longer than the burst: nothing is written until SIGTERM.
    let r = Reverse::start(&db.uri(), &p, out.path(), &["--debounce-ms", "600000"]).await;
    let (users, jobs) = (db.db.collection::<Document>("users"), db.db.collection::<Document>("training_jobs"));
    for i in 0..300_i32 {
        users.update_one(doc! {"_id": "u1"}, doc! {"$set": {"n": i}}).await.unwrap();
        jobs.update_one(doc! {"_id": "j1"}, doc! {"$set": {"step": i}}).await.unwrap();
    }
    r.stop().await;
    until_exact(&db, &p, out.path()).await;
    let state = db.doc("mirror_state", "reverse").await.unwrap();
    let flushes = state.get_document("totals").unwrap().get_i64("flushes").unwrap();
    assert_eq!(flushes, 2, "the first compare, then one flush of 600 changes at SIGTERM: {state}");
    assert!(!state.get_bool("running").unwrap(), "stopped: {state}");
    // The token stored with that flush resumes: a restart compares nothing.
    let r = Reverse::start(&db.uri(), &p, out.path(), &[]).await;
    let log = r.stop().await;
    assert!(log.contains("Resuming from the stored resume token") && !log.contains("every file"), "{log}");
    // --full compares every file all the same.
    let r = Reverse::start(&db.uri(), &p, out.path(), &["--full"]).await;
    let log = r.stop().await;
    assert!(log.contains("Compared every file with MongoDB"), "{log}");
    // The token belongs to its folder: another folder starts with a full compare.
    let other = tempfile::tempdir().unwrap();
    let r = Reverse::start(&db.uri(), &p, other.path(), &[]).await;
    until_exact(&db, &p, other.path()).await;
    assert!(r.stop().await.contains("No stored resume token for this folder"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_after_kill_9_resumes_from_the_stored_token() {
    let db = TestDb::new("reverse_restart").await;
    let p = cut_over(&db).await;
    let out = tempfile::tempdir().unwrap();
    let r = Reverse::start(&db.uri(), &p, out.path(), &[]).await;
    let (users, jobs) = (db.db.collection::<Document>("users"), db.db.collection::<Document>("training_jobs"));
    jobs.update_one(doc! {"_id": "j1"}, doc! {"$set": {"status": "failed"}}).await.unwrap();
    until_exact(&db, &p, out.path()).await;
    // The token of that flush is stored before the files are checked again.
    eventually(30, "a stored token", || async {
        db.doc("mirror_state", "reverse").await.is_some_and(|d| d.contains_key("token"))
    })
    .await;
    r.crash().await;
    // While it is down, the app goes on writing MongoDB.
    users.update_one(doc! {"_id": "u1"}, doc! {"$set": {"name": "Renamed"}}).await.unwrap();
    jobs.delete_one(doc! {"_id": "j2"}).await.unwrap();
    jobs.insert_one(doc! {"_id": "j3", "job_id": "j3", "status": "queued"}).await.unwrap();
    let r = Reverse::start(&db.uri(), &p, out.path(), &[]).await;
    until_exact(&db, &p, out.path()).await;
    let log = r.log_text();
    assert!(log.contains("Resuming from the stored resume token"), "{log}");
    assert!(!log.contains("every file"), "no full compare after a resumable restart: {log}");
    r.stop().await;

    // A token that no longer resumes: one line, then a full compare.
    let state = db.db.collection::<Document>("mirror_state");
    state.update_one(doc! {"_id": "reverse"}, doc! {"$set": {"token": {"_data": "00"}}}).await.unwrap();
    jobs.insert_one(doc! {"_id": "j4", "job_id": "j4", "status": "queued"}).await.unwrap();
    let r = Reverse::start(&db.uri(), &p, out.path(), &[]).await;
    until_exact(&db, &p, out.path()).await;
    let log = r.stop().await;
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("no longer resumes")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("comparing every file with MongoDB"), "{log}");
}

/// The platform's login, as its file-based `UserModel` does it: the user by
/// lower-cased email in `data/users.json`, then a bcrypt compare.
fn app_login(users_json: &Path, email: &str, password: &str) -> bool {
    let users = read(users_json);
    let wanted = email.trim().to_lowercase();
    let Some(u) = users.as_array().unwrap().iter().find(|u| u["email"] == wanted.as_str()) else { return false };
    bcrypt::verify(password, u["password"].as_str().unwrap()).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apps_login_works_on_the_reversed_files() {
    let db = TestDb::new("reverse_login").await;
    let p = cut_over(&db).await;
    let out = tempfile::tempdir().unwrap();
    let r = Reverse::start(&db.uri(), &p, out.path(), &[]).await;
    // After the cutover a user registers through the app, which writes MongoDB.
    let hash = bcrypt::hash("hunter22-plain", 4).unwrap();
    let users = db.db.collection::<Document>("users");
    users.insert_one(doc! {"_id": "u7", "id": "u7", "email": "new@x.io", "password": &hash}).await.unwrap();
    until_exact(&db, &p, out.path()).await;
    let file = out.path().join("data/users.json");
    // A user migrated with a plaintext password, and the one registered since.
    assert!(app_login(&file, "A@x.io ", "correct-horse-plain"));
    assert!(app_login(&file, "new@x.io", "hunter22-plain"));
    assert!(!app_login(&file, "new@x.io", "correct-horse-plain"));
    assert!(!std::fs::read_to_string(&file).unwrap().contains("correct-horse-plain"), "never the plaintext");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reverse_refuses_the_forward_folders_and_a_migration_not_cut_over() {
    let db = TestDb::new("reverse_refusals").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", T)]));
    assert_eq!(docmirror(&db, &p, &["sync"]).await.code, 0);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    // No cutover yet.
    let run = docmirror(&db, &p, &["reverse", "--out", dir]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no cutover is recorded") && run.stderr.contains("--before-cutover"), "{}", run.stderr);
    assert!(tree(out.path()).is_empty(), "nothing written");
    assert_eq!(docmirror(&db, &p, &["cutover", "--quiet-secs", "0"]).await.code, 0);
    // The folders the forward mirror reads: the platform's tree, or inside it.
    let platform = p.dir.path().to_str().unwrap().to_string();
    for bad in [platform.clone(), format!("{platform}/data/restored")] {
        let run = docmirror(&db, &p, &["reverse", "--out", &bad]).await;
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("a folder the forward mirror reads"), "{}", run.stderr);
    }
    assert!(!p.path("data/restored").exists(), "a refused folder is not even created");
    // A watch on this host recorded other folders in mirror_state: refused too.
    let elsewhere = tempfile::tempdir().unwrap();
    let data = elsewhere.path().join("data");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let watch =
        doc! {"host": host, "running": false, "data_dir": data.to_str().unwrap(), "artifacts_dir": "/nonexistent/a"};
    let state = db.db.collection::<Document>("mirror_state");
    state.update_one(doc! {"_id": "docmirror"}, doc! {"$set": {"watch": watch}}).await.unwrap();
    let run = docmirror(&db, &p, &["reverse", "--out", elsewhere.path().to_str().unwrap()]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("a docmirror watch on this host"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_change_streams_reverse_refuses_or_polls() {
    let server = OwnServer::start_with(free_port(), &["--standalone"]);
    let uri = server.uri("reverse_standalone");
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", T)]));
    p.job("j1", &job("j1", "running", T));
    assert_eq!(docmirror_at(&uri, &p, &["sync"], &[]).await.code, 0);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    // A rehearsal before the cutover, on a server without change streams.
    let run = docmirror_at(&uri, &p, &["reverse", "--out", dir, "--before-cutover"], &[]).await;
    assert_eq!(run.code, 7, "{run:?}");
    assert!(run.stderr.contains("change stream") && run.stderr.contains("--poll-interval-ms"), "{}", run.stderr);
    // Polling instead: the files follow MongoDB.
    let r = Reverse::spawn(&uri, &p, out.path(), &["--before-cutover", "--poll-interval-ms", "100"]);
    r.wait_for("Compared every file with MongoDB").await;
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let jobs = client.database("reverse_standalone").collection::<Document>("training_jobs");
    jobs.update_one(doc! {"_id": "j1"}, doc! {"$set": {"status": "completed"}}).await.unwrap();
    jobs.insert_one(doc! {"_id": "j2", "job_id": "j2"}).await.unwrap();
    let file = out.path().join("artifacts/jobs/j1.json");
    eventually(60, "the polled change in the file", || {
        let ok = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v["status"] == "completed")
            && out.path().join("artifacts/jobs/j2.json").is_file();
        async move { ok }
    })
    .await;
    jobs.delete_one(doc! {"_id": "j2"}).await.unwrap();
    let gone = out.path().join("artifacts/jobs/j2.json");
    eventually(60, "the deleted job's file removed", || {
        let ok = !gone.exists();
        async move { ok }
    })
    .await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_collection_or_database_empties_the_files() {
    let db = TestDb::new("reverse_drops").await;
    let p = cut_over(&db).await;
    let out = tempfile::tempdir().unwrap();
    let r = Reverse::start(&db.uri(), &p, out.path(), &[]).await;
    until_exact(&db, &p, out.path()).await;
    // A renamed collection: its files go (nothing is left under the mirrored name).
    let admin = db.client.database("admin");
    let (from, to) = (format!("{}.datasets", db.name), format!("{}.datasets_old", db.name));
    admin.run_command(doc! {"renameCollection": from, "to": to}).await.unwrap();
    let metadata = out.path().join("data/datasets/metadata.json");
    eventually(60, "metadata.json emptied by the rename", || {
        let empty =
            std::fs::read(&metadata).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) == Some(json!([]));
        async move { empty }
    })
    .await;
    db.db.collection::<Document>("training_jobs").drop().await.unwrap();
    let jobs = out.path().join("artifacts/jobs");
    eventually(60, "the job files removed with their collection", || {
        let left = std::fs::read_dir(&jobs).map(|d| d.count()).unwrap_or(0);
        async move { left == 0 }
    })
    .await;
    // The whole database: the stream is invalidated, opened again, everything compared.
    db.db.drop().await.unwrap();
    let users = out.path().join("data/users.json");
    eventually(60, "users.json emptied with the database", || {
        let empty =
            std::fs::read(&users).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) == Some(json!([]));
        async move { empty }
    })
    .await;
    // And it goes on following: a user the app creates afresh arrives.
    db.db.collection::<Document>("users").insert_one(doc! {"_id": "u5", "id": "u5", "email": "e@x.io"}).await.unwrap();
    until_exact(&db, &p, out.path()).await;
    assert_eq!(read(&users)[0]["id"], "u5");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reverse_rides_out_a_mongodb_restart() {
    // Durable commits, as a real mongod's journal gives: without them SecantusDB
    // loses its latest oplog entries in a SIGKILL and then resumes an older
    // token silently, with no event and no error.
    let mut server = OwnServer::start_with(free_port(), &["--sync-on-commit"]);
    let uri = server.uri("reverse_outage");
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", T)]));
    p.job("j1", &job("j1", "running", T));
    assert_eq!(docmirror_at(&uri, &p, &["sync"], &[]).await.code, 0);
    assert_eq!(docmirror_at(&uri, &p, &["cutover", "--quiet-secs", "0"], &[]).await.code, 0);
    let out = tempfile::tempdir().unwrap();
    let r = Reverse::start(&uri, &p, out.path(), &[]).await;
    let file = out.path().join("artifacts/jobs/j1.json");
    eventually(60, "the first compare", || {
        let ok = file.is_file();
        async move { ok }
    })
    .await;
    server.kill();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    server.restart_with(&["--sync-on-commit"]);
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let jobs = client.database("reverse_outage").collection::<Document>("training_jobs");
    jobs.update_one(doc! {"_id": "j1"}, doc! {"$set": {"status": "completed"}}).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v["status"] == "completed")
    {
        assert!(std::time::Instant::now() < deadline, "the change never reached the file:\n{}", r.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_folder_it_cannot_write_stops_it_with_exit_6_naming_the_file() {
    let db = TestDb::new("reverse_unwritable").await;
    let p = cut_over(&db).await;
    let out = tempfile::tempdir().unwrap();
    // `data` is a file, so data/users.json cannot be written (root ignores modes).
    std::fs::write(out.path().join("data"), b"not a folder").unwrap();
    let run = docmirror(&db, &p, &["reverse", "--out", out.path().to_str().unwrap()]).await;
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.stderr.contains("cannot write") && run.stderr.contains("users.json"), "{}", run.stderr);
    // No token was stored: the next start compares everything.
    assert!(db.doc("mirror_state", "reverse").await.is_none_or(|d| !d.contains_key("token")));
}
