//! Test support for the PostgreSQL target: one throwaway PostgreSQL cluster
//! per test binary (initdb and pg_ctl's server in a temporary folder, as the
//! unprivileged `postgres` user when the tests run as root, on a free port,
//! stopped and removed when the binary exits), and a fresh database per test.
//! `DOCMIRROR_TEST_POSTGRES_URL` points the tests at an existing server
//! instead (its user needs CREATEDB).

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::support::{command, free_port, run_command, Platform, Run};

const HOW_TO_GET_A_SERVER: &str = "no PostgreSQL test server. Either install PostgreSQL's server binaries \
(`scripts/install-test-server.sh` does it: Debian's `postgresql` package, found under /usr/lib/postgresql/*/bin), \
or point DOCMIRROR_TEST_POSTGRES_URL at a server whose user may create databases \
(e.g. `docker compose --profile postgres up -d postgres` then \
DOCMIRROR_TEST_POSTGRES_URL=postgresql://postgres:postgres@localhost:5432/postgres)";

static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
static CHILD: Mutex<Option<Child>> = Mutex::new(None);

/// `postgresql://user@host:port` of the test server, without a database.
pub fn server_url() -> String {
    let r = SERVER.get_or_init(|| match std::env::var("DOCMIRROR_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Ok(strip_db(&url)),
        _ => start_cluster(),
    });
    match r {
        Ok(url) => url.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// `scheme://authority/db?query` → `scheme://authority` and the query.
fn strip_db(url: &str) -> String {
    let Some(i) = url.find("://") else { return url.to_string() };
    let rest = &url[i + 3..];
    match rest.find(['/', '?']) {
        Some(j) => url[..i + 3 + j].to_string(),
        None => url.to_string(),
    }
}

/// The folder holding initdb and postgres: the newest /usr/lib/postgresql/*/bin,
/// else the one initdb is found in on PATH.
fn bindir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").exists() && d.join("postgres").exists())
}

fn is_root() -> bool {
    // SAFETY-free: geteuid has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid() == 0
    }
}

/// A command run as the `postgres` user when we are root (the server refuses root).
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start_cluster() -> Result<String, String> {
    let bin = bindir().ok_or_else(|| format!("{HOW_TO_GET_A_SERVER} (found no initdb)"))?;
    let dir = tempfile::Builder::new().prefix("docmirror-pg-").tempdir().map_err(|e| e.to_string())?.keep();
    if is_root() {
        let ok = Command::new("chown").arg("postgres:").arg(&dir).status().map_err(|e| e.to_string())?;
        if !ok.success() {
            return Err(format!("{HOW_TO_GET_A_SERVER} (cannot chown {} to the postgres user)", dir.display()));
        }
    }
    let data = dir.join("data");
    let out = as_server_user(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        .output()
        .map_err(|e| format!("{HOW_TO_GET_A_SERVER} (cannot run initdb: {e})"))?;
    if !out.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let port = free_port();
    let log = std::fs::File::create(std::env::temp_dir().join(format!("docmirror-test-postgres-{port}.log")))
        .map_err(|e| e.to_string())?;
    // The server lives as long as this binary: when it exits, the pipe closes,
    // and the shell stops the server (fast shutdown) and removes the folder.
    let child = as_server_user(Path::new("sh"))
        .arg("-c")
        .arg(
            "\"$0\" -D \"$1\" -p \"$2\" -k \"$3\" -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c timezone=UTC & pid=$!; cat >/dev/null; kill -INT $pid; \
             wait $pid; rm -rf \"$3\"",
        )
        .arg(bin.join("postgres"))
        .arg(&data)
        .arg(port.to_string())
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    *CHILD.lock().map_err(|e| e.to_string())? = Some(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("postgres did not listen on port {port} within 60 s (see its log in /tmp)"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(format!("postgresql://postgres@127.0.0.1:{port}"))
}

/// Connect, waiting while the server starts up.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                return client;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot connect to the PostgreSQL test server at {url}: {e}"),
        }
    }
}

/// A database of its own for one test, made afresh.
pub struct TestPg {
    pub name: String,
    pub url: String,
    pub client: tokio_postgres::Client,
}

impl TestPg {
    pub async fn new(test: &str) -> TestPg {
        let base = server_url();
        let admin = connect(&format!("{base}/postgres")).await;
        let name = format!("t_{}_{}", test, std::process::id()).to_lowercase();
        assert!(name.len() < 64, "database name too long: {name}");
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\"")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.unwrap();
        let url = format!("{base}/{name}");
        let client = connect(&url).await;
        TestPg { name, url, client }
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0)
    }

    /// One text value per row of `sql` (first column, NULL as "NULL").
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        let rows = self.client.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.iter().map(|r| r.get::<_, Option<String>>(0).unwrap_or_else(|| "NULL".into())).collect()
    }

    pub async fn text(&self, sql: &str) -> String {
        let all = self.texts(sql).await;
        assert_eq!(all.len(), 1, "{sql} returned {all:?}");
        all.into_iter().next().unwrap()
    }

    pub async fn exec(&self, sql: &str) {
        self.client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Run `docmirror ARGS --target postgres` against the test's database.
pub async fn docmirror_pg(db: &TestPg, p: &Platform, args: &[&str]) -> Run {
    docmirror_pg_env(db, p, args, &[]).await
}

pub async fn docmirror_pg_env(db: &TestPg, p: &Platform, args: &[&str], env: &[(&str, &str)]) -> Run {
    // MONGODB_URI points nowhere: a PostgreSQL run must never need MongoDB.
    let mut cmd = command("mongodb://127.0.0.1:9/none", p);
    cmd.env("DOCMIRROR_TARGET", "postgres").env("DATABASE_URL", &db.url).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(&mut cmd, Duration::from_secs(300)).await
}
