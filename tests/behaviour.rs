//! The behaviour suite shared by both targets: each test below runs once
//! against MongoDB (`behaviour::mongodb::NAME`) and once against PostgreSQL
//! (`behaviour::postgres::NAME`), through the same binary and the same files.

use serde_json::json;

use crate::support::*;
use crate::support_targets::{all_docs, Db, Kind};

crate::for_each_target!(
    a_second_sync_writes_nothing,
    plaintext_passwords_are_hashed_with_bcrypt,
    each_bad_record_is_rejected_with_its_reason_and_the_rest_arrive,
    an_older_file_never_overwrites_a_newer_record,
    deletes_are_archived_and_mass_deletes_held_back,
    dry_run_prints_the_plan_and_writes_nothing,
    an_identity_clash_is_recorded_with_both_ids_and_verified,
    users_who_swap_emails_converge,
    verify_is_clean_after_sync_and_finds_each_kind_of_drift,
);

const T0: &str = "2025-10-01T00:00:00Z";

async fn a_second_sync_writes_nothing(kind: Kind) {
    let db = Db::new(kind, "idempotent").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", T0), user("u2", "b@x.io", T0)]));
    p.datasets(&json!([dataset("d1", 1)]));
    p.job("j1", &job("j1", "running", "2025-10-12T09:41:13.002Z"));
    assert_eq!(db.run(&p, &["sync"]).await.count("inserted"), 4);
    let colls = ["users", "datasets", "training_jobs"];
    let before = db.snapshot(&colls).await;
    assert_eq!(before.len(), 4);

    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.code, 0);
    assert_eq!((run.count("inserted"), run.count("updated"), run.count("unchanged")), (0, 0, 4), "{}", run.summary());
    assert_eq!(db.snapshot(&colls).await, before, "records (and when they were written) must be untouched");
}

async fn plaintext_passwords_are_hashed_with_bcrypt(kind: Kind) {
    let db = Db::new(kind, "plaintext").await;
    let p = Platform::new();
    let mut u = user("u1", "a@x.io", T0);
    u["password"] = json!("hunter22-plain");
    p.users(&json!([u, user("u2", "b@x.io", T0)]));
    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let hash = db.get("users", "u1", "password").await.unwrap();
    assert!(hash.starts_with("$2b$10$") && hash.len() == 60, "{hash}");
    assert!(bcrypt::verify("hunter22-plain", &hash).unwrap());
    if let Some(m) = db.mongo() {
        assert!(!format!("{:?}", m.doc("users", "u1").await).contains("hunter22-plain"));
    }
    // The hash of a plaintext password is not redone when nothing changed...
    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.count("unchanged"), 2, "{}", run.summary());
    assert_eq!(db.get("users", "u1", "password").await.unwrap(), hash);
    // ...but a new plaintext password is hashed again.
    let mut u = user("u1", "a@x.io", T0);
    u["password"] = json!("correct-horse-plain");
    p.users(&json!([u, user("u2", "b@x.io", T0)]));
    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.count("updated"), 1, "{}", run.summary());
    let new_hash = db.get("users", "u1", "password").await.unwrap();
    assert!(bcrypt::verify("correct-horse-plain", &new_hash).unwrap());
}

async fn each_bad_record_is_rejected_with_its_reason_and_the_rest_arrive(kind: Kind) {
    let db = Db::new(kind, "rejects").await;
    // A user the app created in the database under another id holds an email.
    db.app_user("app-made", "taken@x.io").await;
    let p = Platform::new();
    let mut plain_bad_id = json!({"id": 42, "email": "n@x.io", "password": "hunter22-plain"});
    plain_bad_id["name"] = json!("numeric id");
    p.users(&json!([
        user("u1", "a@x.io", T0),
        {"email": "noid@x.io"},
        plain_bad_id,
        {"id": "u3", "email": "c@x.io", "createdAt": "last tuesday"},
        user("u1", "dup-id@x.io", T0),
        user("u4", "A@X.IO", T0),
        user("u5", "taken@x.io", T0),
        user("u6", "ok@x.io", T0),
    ]));
    let before = p.snapshot();
    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.code, 3, "rejects give exit code 3: {run:?}");
    assert_eq!(run.count("inserted"), 2, "{}", run.summary());
    assert_eq!(run.count("rejected"), 6, "{}", run.summary());
    assert!(db.get("users", "u1", "id").await.is_some() && db.get("users", "u6", "id").await.is_some());

    let codes = db.reject_codes().await;
    assert_eq!(
        codes,
        [
            ("data/users.json[1]", "missing_id"),
            ("data/users.json[2]", "id_not_string"),
            ("data/users.json[3]", "bad_date"),
            ("data/users.json[4]", "duplicate_id"),
            ("data/users.json[5]", "duplicate_email"),
            ("data/users.json[6]", "email_taken"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let rejects = db.rejects().await;
    let taken = rejects.iter().find(|r| r.get_str("reason_code").unwrap() == "email_taken").unwrap();
    assert!(taken.get_str("reason").unwrap().contains("app-made"), "{taken:?}");
    // Plaintext passwords are hashed in the stored rejects too.
    let numeric = rejects.iter().find(|r| r.get_str("reason_code").unwrap() == "id_not_string").unwrap();
    let pw = numeric.get_document("record").unwrap().get_str("password").unwrap();
    assert!(bcrypt::verify("hunter22-plain", pw).unwrap());
    // Each reject is one log line naming the file, position and reason.
    assert!(run.stderr.lines().any(|l| l.contains("data/users.json[3]") && l.contains("createdAt")), "{}", run.stderr);

    // Rejects are not duplicated by a second run, and disappear once fixed.
    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.code, 3);
    assert_eq!(db.rejects().await.len(), 6);
    assert_eq!(p.snapshot(), before);
    p.users(&json!([user("u1", "a@x.io", T0), user("u6", "ok@x.io", T0)]));
    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(db.rejects().await.len(), 0);
}

async fn an_older_file_never_overwrites_a_newer_record(kind: Kind) {
    let db = Db::new(kind, "newer_wins").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", T0)]));
    assert_eq!(db.run(&p, &["sync"]).await.code, 0);
    // The app (dual-write) updates the database with a newer version.
    db.set("users", "u1", "name", "From the app").await;
    db.set("users", "u1", "updatedAt", "2025-11-01T00:00:00Z").await;
    // The file changes, but carries an older version.
    let mut u = user("u1", "a@x.io", "2025-10-15T00:00:00Z");
    u["name"] = json!("Stale file");
    p.users(&json!([u]));
    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.count(&format!("skipped (newer in {})", db.name())), 1, "{}", run.summary());
    assert_eq!(db.get("users", "u1", "name").await.unwrap(), "From the app");
    // With --conflict file-wins the file wins.
    let run = db.run(&p, &["sync", "--conflict", "file-wins"]).await;
    assert_eq!(run.count("updated"), 1, "{}", run.summary());
    assert_eq!(db.get("users", "u1", "name").await.unwrap(), "Stale file");
}

async fn deletes_are_archived_and_mass_deletes_held_back(kind: Kind) {
    let db = Db::new(kind, "deletes").await;
    let p = Platform::new();
    let users: Vec<_> = (0..4).map(|i| user(&format!("u{i}"), &format!("{i}@x.io"), T0)).collect();
    p.users(&json!(users));
    // Jobs of nobody in particular: on PostgreSQL a referenced user cannot go.
    for j in ["j1", "j2"] {
        let mut v = job(j, "running", "2025-10-12T09:41:13.002Z");
        v["user_id"] = json!(null);
        v["dataset_id"] = json!(null);
        p.job(j, &v);
    }
    assert_eq!(db.run(&p, &["sync"]).await.code, 0);

    // One user removed from users.json, one job file deleted: archived.
    p.users(&json!(users[1..].to_vec()));
    p.remove("artifacts/jobs/j1.json");
    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.count("archived"), 2, "{}", run.summary());
    assert!(db.get("users", "u0", "id").await.is_none());
    assert_eq!(db.archived("users", "email").await, [("u0".to_string(), "0@x.io".to_string())]);
    assert_eq!(db.archived("training_jobs", "status").await, [("j1".to_string(), "running".to_string())]);
    // The freed email can be taken by a new user.
    p.users(&json!([users[1], users[2], users[3], user("u9", "0@x.io", T0)]));
    assert_eq!(db.run(&p, &["sync"]).await.count("inserted"), 1);

    // users.json suddenly empty: not read as "delete everything". A dry run says so too,
    // and a dry run of what would go says archive or delete as the real run would.
    p.users(&json!([]));
    let run = db.run(&p, &["sync", "--dry-run"]).await;
    assert_eq!(run.count("deletes held back"), 4, "{}", run.summary());
    assert_eq!(run.count("would be deleted"), 0, "{}", run.summary());
    assert!(run.stdout.contains("would hold back 4 deletes of users"), "{}", run.stdout);
    let run = db.run(&p, &["sync", "--dry-run", "--allow-mass-delete"]).await;
    assert_eq!(run.count("would be archived"), 4, "{}", run.summary());
    assert_eq!(run.count("would be deleted"), 0, "{}", run.summary());
    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.count("deletes held back"), 4, "{}", run.summary());
    assert_eq!(db.count("users").await, 4);
    assert!(run.stderr.contains("--allow-mass-delete"), "{}", run.stderr);
    let run = db.run(&p, &["sync", "--allow-mass-delete", "--on-delete", "delete"]).await;
    assert_eq!(run.count("deleted"), 4, "{}", run.summary());
    assert_eq!(db.count("users").await, 0);
}

async fn dry_run_prints_the_plan_and_writes_nothing(kind: Kind) {
    let db = Db::new(kind, "dry_run").await;
    let p = Platform::new();
    p.users(&json!([user("u1", "a@x.io", T0)]));
    p.job("j1", &job("j1", "running", "2025-10-12T09:41:13.002Z"));
    let run = db.run(&p, &["sync", "--dry-run"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("would insert users/u1 from data/users.json[0]"), "{}", run.stdout);
    assert!(run.stdout.contains("would insert training_jobs/j1 from artifacts/jobs/j1.json"), "{}", run.stdout);
    assert_eq!(run.count("would be inserted"), 2, "{}", run.summary());
    assert!(db.is_empty().await, "the dry run created collections or tables");
}

async fn an_identity_clash_is_recorded_with_both_ids_and_verified(kind: Kind) {
    let db = Db::new(kind, "identity_clash").await;
    let p = Platform::new();
    // The app registered this user itself, under its own ObjectId-style id.
    db.app_user("65f0c0ffee", "dup@x.io").await;
    p.users(&json!([user("u1", "dup@x.io", T0)]));
    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    let r = &db.rejects().await[0];
    assert_eq!(r.get_str("reason_code").unwrap(), "email_taken");
    assert_eq!(r.get_str("record_id").unwrap(), "u1");
    assert_eq!(r.get_str("clashes_with_id").unwrap(), "65f0c0ffee");
    assert_eq!(db.get("users", "65f0c0ffee", "name").await.unwrap(), "app", "not overwritten");
    let run = db.run(&p, &["verify"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("rejected  users data/users.json[0]") && run.stdout.contains("65f0c0ffee"),
        "{}",
        run.stdout
    );
}

async fn users_who_swap_emails_converge(kind: Kind) {
    let db = Db::new(kind, "email_swap").await;
    let p = Platform::new();
    p.users(&json!([
        user("u1", "a@x.io", T0),
        user("u2", "b@x.io", T0),
        user("u3", "c@x.io", T0),
        user("u4", "d@x.io", T0)
    ]));
    assert_eq!(db.run(&p, &["sync"]).await.code, 0);
    // u1 and u2 swap; u3 and u4 pass theirs round with a third, new address.
    let t1 = "2025-10-02T00:00:00Z";
    p.users(&json!([
        user("u1", "b@x.io", t1),
        user("u2", "a@x.io", t1),
        user("u3", "d@x.io", t1),
        user("u4", "e@x.io", t1)
    ]));
    let run = db.run(&p, &["sync"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.count("updated"), 4, "{}", run.summary());
    assert!(db.rejects().await.is_empty());
    for (id, email) in [("u1", "b@x.io"), ("u2", "a@x.io"), ("u3", "d@x.io"), ("u4", "e@x.io")] {
        assert_eq!(db.get("users", id, "email").await.unwrap(), email);
    }
    let run = db.run(&p, &["sync"]).await;
    assert_eq!((run.count("updated"), run.count("inserted")), (0, 0), "{}", run.summary());
    assert_eq!(db.run(&p, &["verify"]).await.code, 0);
}

async fn verify_is_clean_after_sync_and_finds_each_kind_of_drift(kind: Kind) {
    let db = Db::new(kind, "verify_drift").await;
    let p = Platform::new();
    let mut plain = user("u3", "c@x.io", T0);
    plain["password"] = json!("hunter22-plain");
    p.users(&json!([user("u1", "a@x.io", T0), user("u2", "b@x.io", T0), plain]));
    p.datasets(&json!([dataset("d1", 10), dataset("d2", 20)]));
    p.job("j1", &job("j1", "running", "2025-10-12T09:41:13.002Z"));
    p.job("j2", &job("j2", "running", "2025-10-12T09:41:13.002Z"));
    assert_eq!(db.run(&p, &["sync"]).await.code, 0);
    let run = db.run(&p, &["verify"]).await;
    assert_eq!(run.code, 0, "clean after sync: {run:?}");
    assert!(run.stdout.contains(&format!("{} holds exactly what the files hold", db.name())), "{}", run.stdout);

    // Drift: a changed field, a changed password, a deleted record, an extra one,
    // a newer record from the app, and a record that cannot be mirrored.
    db.set("users", "u1", "name", "edited in the database").await;
    db.set("users", "u3", "password", HASH_B).await;
    db.delete("datasets", "d2").await;
    db.app_job("ghost").await;
    db.set("training_jobs", "j2", "status", "completed").await;
    db.set("training_jobs", "j2", "updated_at", "2026-01-01T00:00:00Z").await;
    p.job("j3", &json!({"job_id": 3, "status": "queued"}));

    let run = db.run(&p, &["verify", "--format", "json"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["in_sync"], false);
    let coll = |name: &str| {
        report["collections"].as_array().unwrap().iter().find(|c| c["collection"] == name).unwrap().clone()
    };
    let diffs: Vec<(String, Vec<String>)> = coll("users")["different"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let fields = d["fields"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
            (d["id"].as_str().unwrap().to_string(), fields)
        })
        .collect();
    assert!(diffs.contains(&("u1".into(), vec!["name".into()])), "{diffs:?}");
    assert!(diffs.contains(&("u3".into(), vec!["password (differs)".into()])), "{diffs:?}");
    assert_eq!(coll("datasets")["missing"][0]["id"], "d2");
    let jobs = coll("training_jobs");
    assert_eq!(jobs["extra"], json!(["ghost"]));
    assert_eq!(jobs["newer_in_mongodb"][0]["id"], "j2", "{jobs}");
    assert_eq!(jobs["rejected"][0]["reason_code"], "id_not_string");
    assert_eq!(jobs["in_files"], 3);
    assert!(!run.stdout.contains(HASH_B), "password values are never shown");

    // The text form names each one too.
    let run = db.run(&p, &["verify"]).await;
    assert_eq!(run.code, 1);
    for needle in [
        "different users/u1: name",
        "password (differs)",
        "missing   datasets/d2",
        "extra     training_jobs/ghost",
        "newer     training_jobs/j2",
        "rejected  training_jobs artifacts/jobs/j3.json",
    ] {
        assert!(run.stdout.contains(needle), "missing {needle:?} in\n{}", run.stdout);
    }
    if let Some(m) = db.mongo() {
        assert_eq!(all_docs(m, "training_jobs").await.len(), 3, "verify writes nothing");
    }
}
