//! Bad input: every file of the committed corpus, on its own and all together
//! beside good files, gives one clear message naming the path and the reason,
//! and every good record still arrives. Plus size limits, symlink loops and
//! directories that look like files.

use serde_json::json;

use crate::support::*;

/// (corpus file, where it goes, expected reason code; None = mirrored).
const CASES: &[(&str, &str, Option<&str>)] = &[
    ("truncated.json", "artifacts/jobs/truncated.json", Some("invalid_json")),
    ("bom.json", "artifacts/jobs/bom.json", None),
    ("invalid-utf8.json", "artifacts/jobs/invalid-utf8.json", Some("invalid_utf8")),
    ("nan.json", "artifacts/jobs/nan.json", Some("invalid_json")),
    ("infinity.json", "artifacts/jobs/infinity.json", Some("invalid_json")),
    ("deep.json", "artifacts/jobs/deep.json", Some("invalid_json")),
    ("duplicate-keys.json", "artifacts/jobs/duplicate-keys.json", Some("duplicate_key")),
    ("wrong-top-level.json", "artifacts/jobs/wrong-top-level.json", Some("wrong_top_level_type")),
    ("id-number.json", "artifacts/jobs/id-number.json", Some("id_not_string")),
    ("id-null.json", "artifacts/jobs/id-null.json", Some("id_not_string")),
    ("id-object.json", "artifacts/jobs/id-object.json", Some("id_not_string")),
    ("dollar-key.json", "artifacts/jobs/dollar-key.json", Some("forbidden_key")),
    ("dotted-key.json", "artifacts/jobs/dotted-key.json", Some("forbidden_key")),
    ("malformed-bcrypt-users.json", "data/users.json", Some("malformed_bcrypt")),
];

fn corpus(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(name)).unwrap()
}

fn good_tree() -> Platform {
    let p = Platform::new();
    p.datasets(&json!([dataset("d1", 1), dataset("d2", 2)]));
    p.job("good-a", &job("good-a", "queued", "2025-10-12T09:00:00.000Z"));
    p.job("good-b", &job("good-b", "running", "2025-10-12T09:00:00.000Z"));
    p
}

async fn assert_good_arrived(db: &TestDb) {
    assert!(db.doc("training_jobs", "good-a").await.is_some());
    assert!(db.doc("training_jobs", "good-b").await.is_some());
    assert_eq!(db.count("datasets").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_file_alone_is_named_with_its_reason() {
    for (i, (name, dest, code)) in CASES.iter().enumerate() {
        let db = TestDb::new(&format!("bad_{i}")).await;
        let p = good_tree();
        p.write(dest, corpus(name));
        let before = p.snapshot();
        let run = docmirror(&db, &p, &["sync"]).await;
        assert_good_arrived(&db).await;
        assert_eq!(p.snapshot(), before, "{name}: the source tree changed");
        let rel = dest.to_string();
        match code {
            None => {
                assert_eq!(run.code, 0, "{name}: {run:?}");
                assert_eq!(db.rejects().await.len(), 0, "{name}");
            }
            Some(code) => {
                assert_eq!(run.code, 3, "{name}: {run:?}");
                let rejects = db.rejects().await;
                assert_eq!(rejects.len(), 1, "{name}: {rejects:?}");
                assert_eq!(rejects[0].get_str("reason_code").unwrap(), *code, "{name}");
                assert_eq!(rejects[0].get_str("source").unwrap(), rel, "{name}");
                let lines: Vec<&str> = run.stderr.lines().filter(|l| l.contains("Rejected")).collect();
                assert_eq!(lines.len(), 1, "{name}: one clear line: {}", run.stderr);
                assert!(lines[0].contains(&rel) && lines[0].contains(code), "{name}: {}", lines[0]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn all_bad_files_together_beside_good_ones() {
    let db = TestDb::new("bad_all").await;
    let p = good_tree();
    for (name, dest, _) in CASES {
        p.write(dest, corpus(name));
    }
    // A directory that looks like a job file, a symlink loop, and a file over the size limit.
    std::fs::create_dir_all(p.path("artifacts/jobs/folder.json")).unwrap();
    std::os::unix::fs::symlink("loop-b.json", p.path("artifacts/jobs/loop-a.json")).unwrap();
    std::os::unix::fs::symlink("loop-a.json", p.path("artifacts/jobs/loop-b.json")).unwrap();
    let mut big = job("big", "queued", "2025-10-12T09:00:00.000Z");
    big["message"] = json!("x".repeat(20_000));
    p.job("big", &big);
    let before = p.snapshot();
    let run = docmirror(&db, &p, &["sync", "--max-file-bytes", "10000"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert_good_arrived(&db).await;
    assert!(db.doc("training_jobs", "bom").await.is_some());
    let rejects = db.rejects().await;
    let mut codes: Vec<String> = rejects.iter().map(|r| r.get_str("reason_code").unwrap().to_string()).collect();
    codes.sort();
    let mut want: Vec<String> = CASES.iter().filter_map(|(_, _, c)| c.map(str::to_string)).collect();
    want.extend(["not_a_file", "file_unreadable", "file_unreadable", "file_too_large"].map(String::from));
    want.sort();
    assert_eq!(codes, want);
    for r in &rejects {
        assert!(!r.get_str("reason").unwrap().is_empty());
    }
    assert!(run.stderr.contains("artifacts/jobs/folder.json") && run.stderr.contains("a directory"), "{}", run.stderr);
    assert!(
        run.stderr.contains("artifacts/jobs/big.json") && run.stderr.contains("--max-file-bytes"),
        "{}",
        run.stderr
    );
    assert_eq!(p.snapshot(), before);
}
