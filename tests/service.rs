//! Running as a service: systemd notifications and credentials.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_watchdog_status_and_stopping() {
    let db = TestDb::new("sd_notify").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_docmirror"))
        .args(["--log-format", "json", "watch", "--debounce-ms", "50"])
        .env("MONGODB_URI", db.uri())
        .env("DOCMIRROR_DATA_DIR", p.data())
        .env("DOCMIRROR_ARTIFACTS_DIR", p.artifacts())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();

    let mut seen = String::new();
    let mut recv_until = |needle: &str, secs: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            assert!(std::time::Instant::now() < deadline, "no {needle:?} from docmirror; got {seen:?}");
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                seen.push('\n');
            }
        }
    };
    recv_until("READY=1", 60);
    assert!(db.doc("users", "u1").await.is_some(), "READY comes after the first full reconcile");
    recv_until("WATCHDOG=1", 10);
    recv_until("STATUS=watching 2 folders", 10);
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    recv_until("STOPPING=1", 20);
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_uri_can_come_from_a_systemd_credential() {
    let db = TestDb::new("credential").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", "2025-10-01T00:00:00Z")]));
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("mongodb-uri"), format!("{}\n", db.uri())).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_docmirror"))
        .args(["sync"])
        .env_remove("MONGODB_URI")
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .env("DOCMIRROR_DATA_DIR", p.data())
        .env("DOCMIRROR_ARTIFACTS_DIR", p.artifacts())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(db.doc("users", "u1").await.is_some());
}
