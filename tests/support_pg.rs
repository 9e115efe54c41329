//! Test support for the PostgreSQL target: one throwaway PostgreSQL cluster
//! per test binary (initdb and pg_ctl's server in a temporary folder, as the
//! unprivileged `postgres` user when the tests run as root, on a free port,
//! stopped and removed when the binary exits), and a fresh database per test.
//! `DOCMIRROR_TEST_POSTGRES_URL` points the tests at an existing server
//! instead (its user needs CREATEDB). The TLS tests start a second cluster
//! of their own with `ssl = on` (always local: it needs certificates made
//! at test time with the `openssl` command).

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
static TLS_SERVER: OnceLock<Result<TlsServer, String>> = OnceLock::new();
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// `postgresql://user@host:port` of the test server, without a database.
pub fn server_url() -> String {
    let r = SERVER.get_or_init(|| match std::env::var("DOCMIRROR_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Ok(strip_db(&url)),
        _ => start_cluster(|_| Ok(Vec::new())).map(|c| c.url),
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

/// A cluster this binary started.
struct Cluster {
    url: String,
    /// Its folder (removed when the binary exits).
    dir: PathBuf,
    /// The server's log.
    log: PathBuf,
}

/// Start a cluster; `prepare` writes files into its folder first (as root, if
/// we are: they are then given to postgres) and says the server's `-c` settings.
fn start_cluster(prepare: impl FnOnce(&Path) -> Result<Vec<String>, String>) -> Result<Cluster, String> {
    let bin = bindir().ok_or_else(|| format!("{HOW_TO_GET_A_SERVER} (found no initdb)"))?;
    let dir = tempfile::Builder::new().prefix("docmirror-pg-").tempdir().map_err(|e| e.to_string())?.keep();
    let settings = prepare(&dir)?;
    if is_root() {
        let ok = Command::new("chown").arg("-R").arg("postgres:").arg(&dir).status().map_err(|e| e.to_string())?;
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
    let log_path = std::env::temp_dir().join(format!("docmirror-test-postgres-{port}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    // The server lives as long as this binary: when it exits, the pipe closes,
    // and the shell stops the server (fast shutdown) and removes the folder.
    let child = as_server_user(Path::new("sh"))
        .arg("-c")
        .arg(
            "data=$1 port=$2 dir=$3; shift 3; \"$0\" -D \"$data\" -p \"$port\" -k \"$dir\" -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c timezone=UTC \"$@\" & pid=$!; cat >/dev/null; \
             kill -INT $pid; wait $pid; rm -rf \"$dir\"",
        )
        .arg(bin.join("postgres"))
        .arg(&data)
        .arg(port.to_string())
        .arg(&dir)
        .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    CHILDREN.lock().map_err(|e| e.to_string())?.push(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("postgres did not listen on port {port} within 60 s (see its log in /tmp)"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Cluster { url: format!("postgresql://postgres@127.0.0.1:{port}"), dir, log: log_path })
}

/// The TLS test server: `ssl = on`, its certificate (for 127.0.0.1 and
/// localhost) signed by a CA made for the run.
pub struct TlsServer {
    /// `postgresql://postgres@127.0.0.1:PORT`, without a database.
    pub url: String,
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    /// A CA that did not.
    pub other_ca: PathBuf,
    /// The server's log (`log_connections = on`: it says which sessions were TLS).
    pub log: PathBuf,
}

pub fn tls_server() -> &'static TlsServer {
    let r = TLS_SERVER.get_or_init(|| {
        let c = start_cluster(|dir| {
            let certs = dir.join("certs");
            make_certificates(&certs)?;
            Ok(vec![
                "ssl=on".into(),
                format!("ssl_cert_file={}", certs.join("server.pem").display()),
                format!("ssl_key_file={}", certs.join("server.key").display()),
                "log_connections=on".into(),
            ])
        });
        c.map(|c| TlsServer {
            url: c.url,
            ca: c.dir.join("certs/ca.pem"),
            other_ca: c.dir.join("certs/other-ca.pem"),
            log: c.log,
        })
    });
    match r {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| format!("the TLS tests need the openssl command (apt-get install openssl): {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// A CA, a server certificate it signs (for 127.0.0.1 and localhost), and another CA.
fn make_certificates(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for (name, cn) in [("ca", "docmirror test CA"), ("other-ca", "another CA")] {
        let (key, pem, subj) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN={cn}"));
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", subj.as_str(), "-keyout", key.as_str()];
        args.extend(ec);
        args.extend(["-out", pem.as_str()]);
        openssl(dir, &args)?;
    }
    let mut args = vec!["req", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"];
    args.extend(ec);
    openssl(dir, &args)?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    )?;
    // The server refuses a key others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())
}

/// The server log's `connection authorized` lines for database `db`.
pub fn sessions(log: &Path, db: &str) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let needle = format!("database={db} ");
    text.lines().filter(|l| l.contains("connection authorized") && l.contains(&needle)).map(str::to_string).collect()
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
        TestPg::on(&server_url(), test).await
    }

    /// A database on the server at `base` (`postgresql://user@host:port`).
    pub async fn on(base: &str, test: &str) -> TestPg {
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

    /// The layout's tables, made as a user's first run makes them: a sync
    /// of a tree with no records.
    pub async fn make_tables(&self) {
        let empty = Platform::new();
        empty.users(&serde_json::json!([]));
        let run = docmirror_pg(self, &empty, &["sync"]).await;
        assert_eq!(run.code, 0, "{run:?}");
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
