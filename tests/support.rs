//! Test support: one MongoDB wire-protocol server per test run, a database
//! per test, a temporary platform tree per test, and a runner for the binary.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bson::{doc, Document};
use futures_util::TryStreamExt;
use mongodb::Client;
use serde_json::Value;

const HOW_TO_GET_A_SERVER: &str = "no MongoDB test server. Either run `scripts/install-test-server.sh` \
(installs SecantusDB into .venv; `scripts/test.sh` does it for you), or point MONGODB_URI at a server \
(e.g. `docker compose up -d mongo` then MONGODB_URI=mongodb://localhost:27017)";

/// The server process (kept for the life of the test binary: when the binary
/// exits, the pipe to the wrapper closes and the wrapper stops the server).
static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
static CHILD: Mutex<Option<Child>> = Mutex::new(None);

/// `mongodb://host:port` of the test server, without a database.
pub fn server_uri() -> String {
    let r = SERVER.get_or_init(|| {
        if let Ok(uri) = std::env::var("MONGODB_URI") {
            return Ok(strip_db(&uri));
        }
        start_secantus()
    });
    match r {
        Ok(uri) => uri.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn strip_db(uri: &str) -> String {
    // mongodb://h:p/db?opts -> mongodb://h:p/?opts
    let Some(i) = uri.find("://") else {
        return uri.to_string();
    };
    let rest = &uri[i + 3..];
    match rest.find('/') {
        Some(j) => {
            let query = rest[j..].find('?').map(|q| &rest[j + q..]).unwrap_or("");
            format!("{}{}/{}", &uri[..i + 3], &rest[..j], query)
        }
        None => format!("{uri}/"),
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The SecantusDB executable: $SECANTUSD, else the one `scripts/install-test-server.sh` installs.
fn secantusd() -> PathBuf {
    std::env::var("SECANTUSD").map(PathBuf::from).unwrap_or_else(|_| repo().join(".venv/bin/secantusd-py"))
}

fn start_secantus() -> Result<String, String> {
    let exe = secantusd();
    if !exe.exists() {
        return Err(format!("{HOW_TO_GET_A_SERVER} (looked for {})", exe.display()));
    }
    let port = free_port();
    let log = std::fs::File::create(std::env::temp_dir().join(format!("docmirror-test-server-{port}.log")))
        .map_err(|e| e.to_string())?;
    // The whole suite shares this server and writes a few hundred thousand
    // changes into its history in minutes; SecantusDB keeps 100,000 by
    // default (a real mongod's oplog holds millions), so a test's change
    // stream could lose its position to other tests' writes.
    let child = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" --port \"$1\" --storage-path :memory: --oplog-max-entries 5000000 & pid=$!; cat >/dev/null; kill $pid; wait $pid")
        .arg(&exe)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    *CHILD.lock().unwrap() = Some(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{} did not listen on port {port} within 60 s", exe.display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(format!("mongodb://127.0.0.1:{port}/"))
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The test server's `maxWireVersion` (25 is MongoDB 8.0): expectations that
/// depend on the server's version follow it.
pub async fn server_wire_version() -> i64 {
    let client = Client::with_uri_str(server_uri()).await.unwrap();
    let hello = client.database("admin").run_command(doc! {"hello": 1}).await.unwrap();
    match hello.get("maxWireVersion") {
        Some(bson::Bson::Int32(v)) => i64::from(*v),
        Some(bson::Bson::Int64(v)) => *v,
        other => panic!("hello without a maxWireVersion: {other:?}"),
    }
}

/// A database of its own for one test, dropped first.
pub struct TestDb {
    pub name: String,
    pub client: Client,
    pub db: mongodb::Database,
    base: String,
}

impl TestDb {
    pub async fn new(test: &str) -> TestDb {
        let base = server_uri();
        let client = Client::with_uri_str(&base).await.unwrap();
        let name = format!("t_{}_{}", test, std::process::id());
        let db = client.database(&name);
        db.drop().await.unwrap();
        TestDb { name, client, db, base }
    }

    /// The same on a server of the test's own (`base` ends with `/`).
    pub async fn at(base: &str, test: &str) -> TestDb {
        let client = Client::with_uri_str(base).await.unwrap();
        let name = format!("t_{}_{}", test, std::process::id());
        let db = client.database(&name);
        db.drop().await.unwrap();
        TestDb { name, client, db, base: base.to_string() }
    }

    /// Another database on the same server and client, named after this one
    /// and `suffix` (not dropped first: the name is the caller's to keep unique).
    pub fn sibling(&self, suffix: &str) -> TestDb {
        let name = format!("{}_{suffix}", self.name);
        let db = self.client.database(&name);
        TestDb { name, client: self.client.clone(), db, base: self.base.clone() }
    }

    /// The URI the binary gets, with this database as its path.
    pub fn uri(&self) -> String {
        let base = &self.base;
        match base.find("/?") {
            Some(i) => format!("{}/{}{}", &base[..i], self.name, &base[i + 1..]),
            None => format!("{}{}", base, self.name),
        }
    }

    pub async fn docs(&self, coll: &str) -> Vec<Document> {
        let c = self.db.collection::<Document>(coll);
        c.find(doc! {}).sort(doc! {"_id": 1}).await.unwrap().try_collect().await.unwrap()
    }

    pub async fn doc(&self, coll: &str, id: &str) -> Option<Document> {
        self.db.collection::<Document>(coll).find_one(doc! {"_id": id}).await.unwrap()
    }

    pub async fn count(&self, coll: &str) -> u64 {
        self.db.collection::<Document>(coll).count_documents(doc! {}).await.unwrap()
    }

    pub async fn rejects(&self) -> Vec<Document> {
        self.docs("mirror_rejects").await
    }
}

/// Every path below a tree with its bytes and mode.
pub type Snapshot = BTreeMap<PathBuf, (Vec<u8>, u32)>;

/// A temporary ML Training Platform tree: data/ and artifacts/jobs/.
///
/// It remembers what the test itself wrote; when it is dropped, the tree must
/// be exactly that, byte for byte: docmirror never writes to its sources.
pub struct Platform {
    pub dir: tempfile::TempDir,
    expected: Mutex<Snapshot>,
}

impl Drop for Platform {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let expected = self.expected.lock().map(|e| e.clone()).unwrap_or_default();
        let now = self.snapshot();
        if now != expected {
            let changed: Vec<_> =
                now.keys().chain(expected.keys()).filter(|k| now.get(*k) != expected.get(*k)).collect();
            panic!("the source tree changed behind the test's back (docmirror must only read it): {changed:?}");
        }
    }
}

impl Platform {
    pub fn new() -> Platform {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/datasets")).unwrap();
        std::fs::create_dir_all(dir.path().join("artifacts/jobs")).unwrap();
        let p = Platform { dir, expected: Mutex::new(Snapshot::new()) };
        p.settle();
        p
    }

    /// Take the tree as it is now as what the test wrote (after changing it
    /// other than through these methods).
    pub fn settle(&self) {
        let snap = self.snapshot();
        *self.expected.lock().unwrap() = snap;
    }

    /// Record what the test just did to `path` (and the folders above it).
    fn note(&self, path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let mut expected = self.expected.lock().unwrap();
        let mut p = path.to_path_buf();
        while p.starts_with(self.dir.path()) && p != self.dir.path() {
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {
                    expected.insert(p.clone(), (Vec::new(), m.permissions().mode()));
                }
                Ok(m) => {
                    expected.insert(p.clone(), (std::fs::read(&p).unwrap_or_default(), m.permissions().mode()));
                }
                Err(_) => {
                    expected.remove(&p);
                }
            }
            if !p.pop() {
                break;
            }
        }
    }

    /// Replace a file the way careful writers do: write a temp file, rename it over.
    pub fn write_by_rename(&self, rel: &str, bytes: &[u8]) {
        write_by_rename(&self.path(rel), bytes);
        self.note(&self.path(rel));
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        self.note(&p);
    }

    pub fn users(&self, v: &Value) {
        self.write("data/users.json", serde_json::to_vec_pretty(v).unwrap());
    }

    pub fn datasets(&self, v: &Value) {
        self.write("data/datasets/metadata.json", serde_json::to_vec_pretty(v).unwrap());
    }

    pub fn job(&self, name: &str, v: &Value) {
        self.write(&format!("artifacts/jobs/{name}.json"), serde_json::to_vec_pretty(v).unwrap());
    }

    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path(rel)).unwrap();
        self.note(&self.path(rel));
    }

    /// Every file below the tree with its bytes and mode: to prove the mirror never writes there.
    pub fn snapshot(&self) -> Snapshot {
        fn walk(dir: &Path, out: &mut Snapshot) {
            use std::os::unix::fs::PermissionsExt;
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                if meta.is_dir() {
                    out.insert(p.clone(), (Vec::new(), meta.permissions().mode()));
                    walk(&p, out);
                } else {
                    let bytes = std::fs::read(&p).unwrap_or_default();
                    out.insert(p, (bytes, meta.permissions().mode()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `sync:` summary line.
    pub fn summary(&self) -> &str {
        self.stdout.lines().find(|l| l.starts_with("sync")).unwrap_or_else(|| panic!("no summary line in {self:?}"))
    }

    /// A number from the summary line, e.g. `count("inserted")`.
    pub fn count(&self, what: &str) -> u64 {
        let s = self.summary();
        let i = s.find(&format!("{what} ")).unwrap_or_else(|| panic!("no {what:?} in {s:?}"));
        s[i + what.len() + 1..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    }
}

/// Run `docmirror ARGS` against `db` with the platform's folders.
pub async fn docmirror(db: &TestDb, p: &Platform, args: &[&str]) -> Run {
    docmirror_env(db, p, args, &[]).await
}

pub async fn docmirror_env(db: &TestDb, p: &Platform, args: &[&str], env: &[(&str, &str)]) -> Run {
    docmirror_at(&db.uri(), p, args, env).await
}

/// The binary, pointed at `uri` and the platform, logging text at debug level.
pub fn command(uri: &str, p: &Platform) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_docmirror"));
    cmd.args(["--log-format", "text"])
        .env("MONGODB_URI", uri)
        .env("DOCMIRROR_DATA_DIR", p.data())
        .env("DOCMIRROR_ARTIFACTS_DIR", p.artifacts())
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    cmd
}

/// Run `docmirror ARGS` against any URI.
pub async fn docmirror_at(uri: &str, p: &Platform, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = command(uri, p);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(&mut cmd, Duration::from_secs(300)).await
}

/// Run a prepared command with a deadline, and check that its output holds no secret.
pub async fn run_command(cmd: &mut tokio::process::Command, deadline: Duration) -> Run {
    let out = tokio::time::timeout(deadline, cmd.output()).await.expect("docmirror hung").unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_no_secrets(&run.stderr);
    assert_no_secrets(&run.stdout);
    run
}

/// Strings no log line may ever hold: the test suite's plaintext passwords and URI passwords.
pub const SECRETS: &[&str] = &["hunter22-plain", "s3cret-uri-pw", "correct-horse-plain"];

pub fn assert_no_secrets(text: &str) {
    for s in SECRETS.iter().chain([HASH_A, HASH_B].iter()) {
        assert!(!text.contains(s), "secret {s:?} leaked into output:\n{text}");
    }
    // No bcrypt hash of any kind, including those made from plaintext passwords.
    assert!(!text.contains("$2b$10$"), "a bcrypt hash leaked into output:\n{text}");
}

pub const HASH_A: &str = "$2b$10$J1JbpLNyErs2Vewf4LDN4u/Os0zWvTlg5el0sAu.ZUnk6lHagoW.u";
pub const HASH_B: &str = "$2b$10$ntUhxPTIjt8sw3z763laB.p38oBgXfvuhnyLn3BWfIQSmguVIe4Rm";

pub fn user(id: &str, email: &str, updated: &str) -> Value {
    serde_json::json!({
        "id": id, "email": email, "name": format!("User {id}"), "password": HASH_A, "role": "user",
        "createdAt": "2025-09-01T08:00:00.000Z", "updatedAt": updated
    })
}

pub fn job(id: &str, status: &str, updated: &str) -> Value {
    serde_json::json!({
        "job_id": id, "user_id": "u1", "dataset_id": "d1", "status": status, "progress": 42.5, "epoch": 2,
        "step": 850, "total_steps": 2000, "loss": 1.0873, "message": "Epoch 2/3",
        "params": {"model": "gpt2", "learning_rate": 0.0001, "batch_size": 8, "lora": {"r": 8}},
        "pid": 51877, "created_at": "2025-10-12T09:00:00.000Z", "updated_at": updated, "completed_at": null
    })
}

pub fn dataset(id: &str, size: i64) -> Value {
    serde_json::json!({
        "id": id, "name": format!("set {id}"), "filename": "x.csv", "path": format!("data/datasets/{id}/x.csv"),
        "size": size, "type": "csv", "uploaded_by": "u1", "uploaded_at": "2025-10-10T08:06:40.000Z", "deleted_at": null
    })
}

/// Wait until `check` holds, polling; panics with `what` after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `docmirror watch`, its log in a file.
pub struct WatchProc {
    pub child: tokio::process::Child,
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl WatchProc {
    /// Start watching and wait for the initial reconcile.
    pub async fn start(uri: &str, p: &Platform, args: &[&str]) -> WatchProc {
        let w = WatchProc::spawn(uri, p, args);
        w.wait_ready().await;
        w
    }

    pub async fn wait_ready(&self) {
        let log = self.log.clone();
        eventually(60, "the initial reconcile", || {
            let log = log.clone();
            async move { std::fs::read_to_string(&log).unwrap_or_default().contains("Initial reconcile done") }
        })
        .await;
    }

    /// Start watching without waiting for anything.
    pub fn spawn(uri: &str, p: &Platform, args: &[&str]) -> WatchProc {
        WatchProc::spawn_env(uri, p, args, &[])
    }

    /// [`WatchProc::spawn`] with extra environment (e.g. `--target postgres`'s).
    pub fn spawn_env(uri: &str, p: &Platform, args: &[&str], env: &[(&str, &str)]) -> WatchProc {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("watch.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = command(uri, p)
            .args(["watch", "--debounce-ms", "50"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        WatchProc { child, log, _logdir: logdir }
    }

    /// Kill it without warning (SIGKILL), as a crash would.
    pub async fn crash(mut self) {
        self.child.kill().await.unwrap();
    }

    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert_no_secrets(&text);
        text
    }

    /// SIGTERM, then wait for a clean exit (code 0).
    pub async fn stop(mut self) -> String {
        let pid = self.child.id().expect("watch already exited");
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("watch did not stop")
            .unwrap();
        let log = self.log_text();
        assert_eq!(exit.code(), Some(0), "watch exit: {log}");
        assert!(log.contains("Stopped"), "{log}");
        log
    }
}

/// Replace a file the way careful writers do: write a temp file, rename it over.
pub fn write_by_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A SecantusDB server of a test's own, on disk so it can be stopped and
/// restarted. Tests that kill, freeze or restart a server use one whatever
/// MONGODB_URI says: they must not stop a server the suite shares.
pub struct OwnServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnServer {
    pub fn start() -> OwnServer {
        OwnServer::on_port(free_port())
    }

    pub fn on_port(port: u16) -> OwnServer {
        OwnServer::start_with(port, &[])
    }

    /// Start one with extra server flags (e.g. `--sync-on-commit`).
    pub fn start_with(port: u16, extra: &[&str]) -> OwnServer {
        let mut s = OwnServer { port, dir: tempfile::tempdir().unwrap(), child: None };
        s.restart_with(extra);
        s
    }

    pub fn uri(&self, db: &str) -> String {
        format!("mongodb://127.0.0.1:{}/{db}", self.port)
    }

    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Start it again with extra server flags (e.g. `--auth`).
    pub fn restart_with(&mut self, extra: &[&str]) {
        let exe = secantusd();
        assert!(
            exe.exists(),
            "this test stops and restarts a server of its own, so it needs SecantusDB even when MONGODB_URI is set: \
             run `scripts/install-test-server.sh` (`scripts/test.sh` does it for you); looked for {}",
            exe.display()
        );
        let child = Command::new(&exe)
            .args(["--port", &self.port.to_string(), "--storage-path"])
            .arg(self.dir.path().join("db"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "own server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freeze it (SIGSTOP) or thaw it (SIGCONT): a server that hangs without closing sockets.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    }

    /// Stop it hard (SIGKILL), as a crash or a pulled cable would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One plain HTTP GET: the status code and the body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let code = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}
