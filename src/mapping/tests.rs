//! Unit tests of the mapping rules, one per rule.

use super::*;
use crate::layout::Layout;
use serde_json::json;

fn spec(i: usize) -> SourceSpec {
    Layout::builtin().sources[i].clone()
}

const HASH: &str = "$2b$10$J1JbpLNyErs2Vewf4LDN4u/Os0zWvTlg5el0sAu.ZUnk6lHagoW.u";

#[test]
fn users_map_with_dates_and_normalised_email() {
    let rec = json!({"id":"u1","email":"  Bob@Example.COM ","name":"Bob","password":HASH,"role":"user",
        "createdAt":"2025-10-13T12:00:00.000Z","updatedAt":"2025-10-13T12:30:00.250Z"});
    let m = map_record(&spec(0), "fp", &rec).unwrap();
    assert_eq!(m.id, "u1");
    assert_eq!(m.doc.get_str("_id").unwrap(), "u1");
    assert_eq!(m.doc.get_str("id").unwrap(), "u1");
    assert_eq!(m.doc.get_str("email").unwrap(), "bob@example.com");
    assert_eq!(m.doc.get_str("password").unwrap(), HASH);
    let created = m.doc.get_datetime("createdAt").unwrap();
    assert_eq!(created.timestamp_millis(), 1_760_356_800_000);
    assert_eq!(m.version.unwrap().timestamp_millis(), 1_760_358_600_250);
    assert!(m.plaintext.is_none());
    assert_eq!(m.fields(), ["id", "email", "name", "password", "role", "createdAt", "updatedAt"]);
}

#[test]
fn plaintext_password_is_held_apart_and_out_of_the_hash() {
    let a = json!({"id":"u1","email":"a@x.io","password":"hunter22"});
    let b = json!({"id":"u1","email":"a@x.io","password":"other-pass"});
    let ma = map_record(&spec(0), "fp", &a).unwrap();
    let mb = map_record(&spec(0), "fp", &b).unwrap();
    assert!(ma.doc.get("password").is_none());
    assert_eq!(ma.plaintext.as_ref().unwrap().expose(), "hunter22");
    assert!(!format!("{ma:?}").contains("hunter22"));
    assert_eq!(ma.hash, mb.hash, "plaintext must not feed the content hash");
    let mut ma = ma;
    hash_password(&mut ma, "password").unwrap();
    let stored = ma.doc.get_str("password").unwrap();
    assert!(is_bcrypt(stored));
    assert!(bcrypt::verify("hunter22", stored).unwrap());
}

#[test]
fn datasets_keep_size_as_int64_and_null_dates() {
    let rec = json!({"id":"d1","size":12,"uploaded_at":"2025-10-10T08:06:40Z","deleted_at":null,"type":"csv"});
    let m = map_record(&spec(1), "fp", &rec).unwrap();
    assert_eq!(m.doc.get("size"), Some(&Bson::Int64(12)));
    assert_eq!(m.doc.get("deleted_at"), Some(&Bson::Null));
    assert!(matches!(m.doc.get("uploaded_at"), Some(Bson::DateTime(_))));
    let big = json!({"id":"d1","size":5.0e9});
    assert_eq!(map_record(&spec(1), "fp", &big).unwrap().doc.get("size"), Some(&Bson::Int64(5_000_000_000)));
    let frac = json!({"id":"d1","size":1.5});
    assert_eq!(map_record(&spec(1), "fp", &frac).unwrap_err().code(), "bad_type");
}

#[test]
fn jobs_keep_number_types_and_embed_params() {
    let rec = json!({"job_id":"j1","status":"running","progress":42.5,"epoch":2,"step":3_000_000_000u64,
        "loss":0.25,"params":{"lr":5e-5,"lora":{"r":8}},"pid":123,"created_at":"2025-10-11T12:00:00.123456",
        "completed_at":null});
    let m = map_record(&spec(2), "fp", &rec).unwrap();
    assert_eq!(m.id, "j1");
    assert_eq!(m.doc.get("progress"), Some(&Bson::Double(42.5)));
    assert_eq!(m.doc.get("epoch"), Some(&Bson::Int32(2)));
    assert_eq!(m.doc.get("step"), Some(&Bson::Int64(3_000_000_000)));
    let params = m.doc.get_document("params").unwrap();
    assert_eq!(params.get_document("lora").unwrap().get("r"), Some(&Bson::Int32(8)));
    // Python's naive isoformat() is read as UTC, microseconds cut to milliseconds.
    assert_eq!(m.doc.get_datetime("created_at").unwrap().timestamp_millis(), 1_760_184_000_123);
    let bad = json!({"job_id":"j1","params":"lr=1"});
    assert_eq!(map_record(&spec(2), "fp", &bad).unwrap_err().code(), "bad_type");
}

#[test]
fn each_reject_reason() {
    let s = spec(0);
    let cases = [
        (json!(5), "not_an_object"),
        (json!({"email":"a@b.c"}), "missing_id"),
        (json!({"id":7,"email":"a@b.c"}), "id_not_string"),
        (json!({"id":null,"email":"a@b.c"}), "id_not_string"),
        (json!({"id":{"x":1},"email":"a@b.c"}), "id_not_string"),
        (json!({"id":"","email":"a@b.c"}), "empty_id"),
        (json!({"id":"u","email":"a@b.c","createdAt":"yesterday"}), "bad_date"),
        (json!({"id":"u","email":"a@b.c","createdAt":true}), "bad_type"),
        (json!({"id":"u","email":"a@b.c","$where":1}), "forbidden_key"),
        (json!({"id":"u","email":"a@b.c","prefs":{"a.b":1}}), "forbidden_key"),
        (json!({"id":"u","email":"a@b.c","password":"$2b$10$short"}), "malformed_bcrypt"),
        (json!({"id":"u","email":"a@b.c","password":12345}), "bad_type"),
        (json!({"id":"u"}), "missing_email"),
        (json!({"id":"u","email":null}), "missing_email"),
    ];
    for (rec, code) in cases {
        let err = map_record(&s, "fp", &rec).unwrap_err();
        assert_eq!(err.code(), code, "{rec}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn dates_in_the_shapes_the_platform_writes() {
    let ms = |s: &str| parse_date(s).map(|d| d.timestamp_millis());
    assert_eq!(ms("2025-10-13T12:00:00.000Z"), Some(1_760_356_800_000));
    assert_eq!(ms("2025-10-13T14:00:00+02:00"), Some(1_760_356_800_000));
    assert_eq!(ms("2025-10-13T12:00:00"), Some(1_760_356_800_000));
    assert_eq!(ms("2025-10-13 12:00:00.5"), Some(1_760_356_800_500));
    assert_eq!(ms("2025-10-13"), Some(1_760_313_600_000));
    assert_eq!(ms("13/10/2025"), None);
    assert_eq!(ms(""), None);
}

#[test]
fn bcrypt_shapes() {
    assert!(is_bcrypt(HASH));
    assert!(is_bcrypt(&HASH.replace("$2b$", "$2y$")));
    assert!(!is_bcrypt(&HASH.replace("$2b$", "$2x$")));
    assert!(!is_bcrypt(&HASH[..59]));
    assert!(!is_bcrypt("plain-password"));
}

#[test]
fn hash_changes_with_content_and_rules() {
    let a = json!({"id":"u","email":"a@b.c","name":"A"});
    let b = json!({"id":"u","email":"a@b.c","name":"B"});
    let s = spec(0);
    assert_ne!(map_record(&s, "fp", &a).unwrap().hash, map_record(&s, "fp", &b).unwrap().hash);
    assert_ne!(map_record(&s, "fp1", &a).unwrap().hash, map_record(&s, "fp2", &a).unwrap().hash);
    assert_eq!(map_record(&s, "fp", &a).unwrap().hash, map_record(&s, "fp", &a.clone()).unwrap().hash);
}

/// A record of `spec(i)` with its id and email, plus `extra` fields.
fn rec(extra: Value) -> Value {
    let mut v = json!({"id":"u1","email":"a@b.c"});
    if let (Value::Object(o), Value::Object(e)) = (&mut v, extra) {
        o.extend(e);
    }
    v
}

fn reject(v: &Value) -> Reject {
    map_record(&spec(0), "fp", v).unwrap_err()
}

#[test]
fn a_nul_in_a_field_name_is_rejected_at_any_depth_naming_the_field() {
    let top = reject(&rec(json!({"a\u{0}b": 1})));
    assert_eq!(top.code(), "nul_in_key");
    assert!(top.to_string().contains(r#""a\0b""#), "{top}");
    let nested = reject(&rec(json!({"prefs": {"ok": {"x\u{0}": true}}})));
    assert_eq!(nested.code(), "nul_in_key");
    assert!(nested.to_string().contains("inside prefs.ok"), "{nested}");
    let in_array = reject(&rec(json!({"tags": [1, {"\u{0}": 2}]})));
    assert_eq!(in_array.code(), "nul_in_key");
    assert!(in_array.to_string().contains("inside tags[1]"), "{in_array}");
    // A NUL in a value is fine: BSON strings are length-prefixed.
    let m = map_record(&spec(0), "fp", &rec(json!({"note": "a\u{0}b"}))).unwrap();
    assert_eq!(m.doc.get_str("note").unwrap(), "a\u{0}b");
    assert!(bson::to_vec(&m.doc).is_ok());
}

#[test]
fn a_nul_in_the_id_is_rejected() {
    let r = reject(&json!({"id":"u\u{0}2","email":"a@b.c"}));
    assert_eq!(r.code(), "nul_in_id");
    assert!(r.to_string().contains("\"id\""), "{r}");
    let job = map_record(&spec(2), "fp", &json!({"job_id":"\u{0}"})).unwrap_err();
    assert_eq!(job.code(), "nul_in_id");
}

#[test]
fn empty_field_names_are_rejected_at_any_depth() {
    assert_eq!(reject(&rec(json!({"": 1}))).code(), "empty_key");
    let nested = reject(&rec(json!({"prefs": {"": 1}})));
    assert_eq!(nested.code(), "empty_key");
    assert!(nested.to_string().contains("inside prefs"), "{nested}");
}

#[test]
fn forbidden_keys_name_where_they_are() {
    let r = reject(&rec(json!({"prefs": {"lora": [{"a.b": 1}]}})));
    assert_eq!(r.code(), "forbidden_key");
    assert!(r.to_string().contains(r#""a.b" inside prefs.lora[0]"#), "{r}");
    let r = reject(&rec(json!({"$set": 1})));
    assert_eq!(
        r.to_string(),
        r#"field name "$set" starts with '$' or contains '.', which MongoDB updates cannot address"#
    );
}

#[test]
fn identity_and_bookkeeping_fields_are_reserved() {
    for field in ["_id", "_mirror"] {
        let r = reject(&rec(json!({ field: "x" })));
        assert_eq!(r.code(), "reserved_field", "{field}");
        assert!(r.to_string().contains(&format!("{field:?}")), "{r}");
    }
    // Nested, they are ordinary field names.
    let m = map_record(&spec(0), "fp", &rec(json!({"prefs": {"_id": 1, "_mirror": 2}}))).unwrap();
    assert_eq!(m.doc.get_str("_id").unwrap(), "u1");
    // A layout whose id field is `_id` itself takes it as the id.
    let mut s = spec(1);
    s.id_field = "_id".into();
    let m = map_record(&s, "fp", &json!({"_id":"d1","size":1})).unwrap();
    assert_eq!(m.doc.get_str("_id").unwrap(), "d1");
    assert_eq!(m.fields(), ["size"]);
    assert_eq!(map_record(&s, "fp", &json!({"_id":"d1","_mirror":{}})).unwrap_err().code(), "reserved_field");
}

/// `{"a": {"a": ... {"a": leaf}}}`: `levels` objects around `leaf`.
fn nested(levels: usize, leaf: Value) -> Value {
    let mut v = leaf;
    for _ in 0..levels {
        v = json!({ "a": v });
    }
    v
}

#[test]
fn nesting_over_100_levels_is_rejected_as_mongodb_counts_it() {
    let s = spec(2);
    let job = |levels: usize, leaf: Value| {
        let mut v = nested(levels, leaf);
        v["job_id"] = json!("j");
        map_record(&s, "fp", &v)
    };
    assert!(job(100, json!(1)).is_ok());
    // Empty objects and arrays do not count (as on the server).
    assert!(job(100, json!({})).is_ok());
    assert!(job(100, json!([])).is_ok());
    let r = job(101, json!(1)).unwrap_err();
    assert_eq!(r.code(), "too_deep");
    assert!(r.to_string().starts_with("objects and arrays nest more than 100 levels deep at a.a.a."), "{r}");
    assert_eq!(job(100, json!([1])).unwrap_err().code(), "too_deep");
    // The same limit in `documents` fields (params).
    let deep = json!({"job_id": "j", "params": nested(100, json!(1))});
    assert_eq!(map_record(&s, "fp", &deep).unwrap_err().code(), "too_deep");
    assert!(to_bson(&nested(100, json!(1))).is_ok());
    assert_eq!(to_bson(&nested(101, json!(1))).unwrap_err().code(), "too_deep");
}

/// The document as the writer stores it (see `reconcile::insert_op`), with
/// a source path as long as a path can be.
fn as_written(m: &Mapped) -> Vec<u8> {
    let mut d = m.doc.clone();
    if let (Some(_), Some(f)) = (&m.plaintext, &m.password_field) {
        d.insert(f.clone(), HASH);
    }
    d.insert(
        "_mirror",
        bson::doc! {"source": "x".repeat(4096), "hash": &m.hash, "fields": m.fields(), "at": bson::DateTime::now()},
    );
    bson::to_vec(&d).unwrap()
}

#[test]
fn documents_over_16_mib_with_bookkeeping_are_rejected_naming_the_largest_field() {
    let s = spec(0);
    let with_blob = |n: usize| rec(json!({"password": "plain-pw", "blob": "x".repeat(n), "n": 1}));
    // Find the largest blob that maps: it must be at most 16 MiB as written.
    let base = map_record(&s, "fp", &with_blob(0)).unwrap();
    assert!(as_written(&base).len() <= stored_size_bound(&base));
    let room = MAX_DOCUMENT_BYTES - stored_size_bound(&base);
    let fits = map_record(&s, "fp", &with_blob(room)).unwrap();
    assert_eq!(stored_size_bound(&fits), MAX_DOCUMENT_BYTES);
    assert!(as_written(&fits).len() <= MAX_DOCUMENT_BYTES, "{}", as_written(&fits).len());
    let r = map_record(&s, "fp", &with_blob(room + 1)).unwrap_err();
    assert_eq!(r.code(), "document_too_large");
    let msg = r.to_string();
    assert!(msg.contains(r#"its largest field is "blob""#) && msg.contains("16777216"), "{msg}");
    // Many small fields count too (each is also listed in `_mirror.fields`).
    let many: Map<String, Value> = (0..700_000).map(|i| (format!("f{i}"), Value::Null)).collect();
    let mut v = json!({"job_id": "j"});
    v.as_object_mut().unwrap().extend(many);
    assert_eq!(map_record(&spec(2), "fp", &v).unwrap_err().code(), "document_too_large");
}

#[test]
fn document_size_is_what_bson_writes() {
    let rec = json!({"job_id":"j","s":"é\u{0}x","i":1,"l":5_000_000_000i64,"f":0.5,"b":true,"n":null,
        "params":{"a":[1,[2,{"c":"d"}],{}],"e":[]},"created_at":"2025-10-13T12:00:00Z",
        "list": (0..25).collect::<Vec<_>>()});
    let m = map_record(&spec(2), "fp", &rec).unwrap();
    assert_eq!(document_size(&m.doc), bson::to_vec(&m.doc).unwrap().len());
    let odd =
        bson::doc! {"r": bson::Regex { pattern: "a".into(), options: "i".into() }, "o": bson::oid::ObjectId::new()};
    assert_eq!(document_size(&odd), bson::to_vec(&odd).unwrap().len());
}

// Real hashes of each form (made with passlib, glibc crypt, Django, libsodium).
const ARGON2ID: &str = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
const ARGON2I: &str = "$argon2i$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA";
const ARGON2D_OLD: &str = "$argon2d$m=4096,t=3,p=1$c29tZXNhbHQ$Z3Z3Z3Z3Z3Z3Z3Z3Z3Z3Zw";
const SCRYPT_PHC: &str = "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E";
const SCRYPT_7: &str = "$7$C6..../....SodiumChloride$kBGj9fHznVYFQMEn/qDCfrDevf9YDtcDdKvEqHJLV8D";
const PBKDF2_SHA256: &str = "$pbkdf2-sha256$29000$9t7be09prfXee2/NOUeotQ$Y.RDnnq8vsezSZSKy1QNy6xhKPdoBIwc.0XDdRm9sJ8";
const PBKDF2_SHA512: &str = "$pbkdf2-sha512$25000$LyWE0HrP2RsjZCxlDGFMKQ$1vC5Ohk2mCS9b6akqsEfgeb4l74SF8XjH.SljXf3dMLHdlY1GK9ojcCKts6/asR4aPqBmk74nCDddU3tvSCJvw";
const PBKDF2_SHA1: &str = "$pbkdf2$131000$kZKzFgJgrBXCeA9hDEFoDQ$EtdTm3Zb3BtvlVN2Th/6zKd0DQg";
const PBKDF2_PHC: &str = "$pbkdf2-sha256$i=10000,l=32$c29tZXNhbHQ$V0f0Rpaq8PLgBm7y8NcWHUdyoDtLgxNkTbRFjm3J5ss";
const DJANGO: &str = "pbkdf2_sha256$260000$abcdefghijklmnopqrstuv$1ZAUFsJQFMLS4wdT9XUyqmHbA394+4a0q2JzR+XU5mE=";
const SHA256_CRYPT: &str = "$5$saltstring$gpdvZHQ.qundoWJjAZwNzbBrhvpB73knRq.7HdH6Y9.";
const SHA512_CRYPT: &str =
    "$6$rounds=5000$saltstring$.vnWcCATS7HX9wLGcWGmRWMy3QtkFQmcbgZ0JzwapmXyqGJ2Gt5UXnLK..eJGzeBsKnKBZB8CvweVE1t5sq6n.";

#[test]
fn recognised_hashes_are_kept_as_they_are_and_feed_the_content_hash() {
    let s = spec(0);
    let cases = [
        (HASH, "bcrypt"),
        ("$2a$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW", "bcrypt"),
        (ARGON2ID, "Argon2"),
        (ARGON2I, "Argon2"),
        (ARGON2D_OLD, "Argon2"),
        (SCRYPT_PHC, "scrypt"),
        (SCRYPT_7, "scrypt"),
        (PBKDF2_SHA256, "PBKDF2"),
        (PBKDF2_SHA512, "PBKDF2"),
        (PBKDF2_SHA1, "PBKDF2"),
        (PBKDF2_PHC, "PBKDF2"),
        (DJANGO, "Django PBKDF2"),
        ("argon2$argon2id$v=19$m=102400,t=2,p=8$c29tZXNhbHQ$Z3Z3Z3Z3Z3Z3Z3Z3Z3Z3Zw", "Django Argon2"),
        (SHA256_CRYPT, "SHA-256-crypt"),
        (SHA512_CRYPT, "SHA-512-crypt"),
    ];
    for (h, scheme) in cases {
        assert_eq!(password_form(h), PasswordForm::Hash(scheme), "{h}");
        assert!(!password_needs_hiding(h));
        let m = map_record(&s, "fp", &rec(json!({ "password": h }))).unwrap();
        assert_eq!(m.doc.get_str("password").unwrap(), h, "stored as it is");
        assert!(m.plaintext.is_none(), "{h} is not plaintext");
        // A hash is not plaintext: it feeds the content hash like any field.
        let mut other = h.to_string();
        other.pop();
        other.push(if h.ends_with('A') { 'B' } else { 'A' });
        let m2 = map_record(&s, "fp", &rec(json!({ "password": other }))).unwrap();
        assert_ne!(m.hash, m2.hash, "{h}");
        // And a rejected record keeps it as it is.
        let copy = reject_copy(&s, &json!({"id": 7, "password": h}));
        assert_eq!(copy.as_document().unwrap().get_str("password").unwrap(), h);
    }
}

#[test]
fn placeholders_are_kept_as_no_usable_password_never_hashed() {
    let s = spec(0);
    for p in
        [json!(""), json!("!"), json!("*"), json!("!!"), json!("  "), json!(null), json!(format!("!{SHA512_CRYPT}"))]
    {
        let m = map_record(&s, "fp", &rec(json!({ "password": p.clone() }))).unwrap();
        assert!(m.plaintext.is_none(), "{p} must not become a password");
        assert_eq!(m.doc.get("password"), Some(&to_bson(&p).unwrap()), "{p} is stored as the file has it");
        assert!(m.fields().contains(&"password".to_string()));
        if let Some(text) = p.as_str() {
            assert_eq!(password_form(text), PasswordForm::Placeholder);
            // bcrypt cannot verify anything against it: no login.
            assert!(bcrypt::verify("", text).is_err() || !bcrypt::verify("", text).unwrap_or(true));
        }
    }
    // A placeholder is not plaintext: changing it changes the content hash.
    let a = map_record(&s, "fp", &rec(json!({"password": ""}))).unwrap();
    let b = map_record(&s, "fp", &rec(json!({"password": "!"}))).unwrap();
    assert_ne!(a.hash, b.hash);
    // A password that merely starts with `!` is a password.
    assert_eq!(password_form("!Passw0rd"), PasswordForm::Plaintext);
    assert_eq!(password_form(" hunter22 "), PasswordForm::Plaintext);
}

#[test]
fn malformed_hashes_are_rejected_not_hashed_again() {
    let s = spec(0);
    let cases = [
        ("$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ", "Argon2"),
        ("$argon2i$garbage", "Argon2"),
        ("$scrypt$ln=16,r=8$salt$hash", "scrypt"),
        ("$7$short$hash", "scrypt"),
        ("$pbkdf2-sha256$many$salt$hash", "PBKDF2"),
        ("$pbkdf2$131000$salt", "PBKDF2"),
        ("$5$salt$tooshort", "SHA-256-crypt"),
        ("$6$rounds=x$salt$hash", "SHA-512-crypt"),
        ("pbkdf2_sha256$abc$salt$hash", "Django PBKDF2"),
    ];
    for (h, scheme) in cases {
        assert_eq!(password_form(h), PasswordForm::Malformed(scheme), "{h}");
        assert!(password_needs_hiding(h));
        let r = reject(&rec(json!({ "password": h })));
        assert_eq!(r.code(), "malformed_hash", "{h}");
        assert!(r.to_string().contains(scheme) && r.to_string().contains("\"password\""), "{r}");
        // The stored reject copy hides it like a password.
        let copy = reject_copy(&s, &rec(json!({ "password": h })));
        assert!(is_bcrypt(copy.as_document().unwrap().get_str("password").unwrap()));
    }
    assert_eq!(reject(&rec(json!({"password": "$2b$10$short"}))).code(), "malformed_bcrypt");
    assert_eq!(reject(&rec(json!({"password": {"h": 1}}))).code(), "bad_type");
    // Anything else is a password.
    for p in ["hunter22", "$money$", "$1$abc", "pbkdf2", "argon2"] {
        assert_eq!(password_form(p), PasswordForm::Plaintext, "{p}");
    }
}

#[test]
fn over_large_reject_copies_keep_their_start_and_size() {
    let s = spec(0);
    let big = json!({"id": "u", "password": "hunter22", "blob": "y".repeat(2 * REJECT_COPY_MAX_BYTES)});
    let copy = reject_copy(&s, &big);
    let d = copy.as_document().unwrap();
    assert_eq!(d.get_bool("truncated"), Ok(true));
    assert!(d.get_i64("json_bytes").unwrap() > 2_000_000);
    let head = d.get_str("json_head").unwrap();
    assert!(head.len() <= 4 * REJECT_COPY_HEAD_CHARS && head.starts_with(r#"{"id":"u","password":"$2b$10$"#));
    assert!(!copy.to_string().contains("hunter22"));
    // Records MongoDB could not store as documents are kept as JSON text.
    let nul = reject_copy(&s, &json!({"id":"u","a\u{0}b":1}));
    assert_eq!(nul, Bson::String(r#"{"id":"u","a\u0000b":1}"#.into()));
    let deep = reject_copy(&s, &nested(100, json!(1)));
    assert!(matches!(deep, Bson::String(_)), "the copy sits one level down: 100 levels are too many there");
    assert!(matches!(reject_copy(&s, &nested(99, json!(1))), Bson::Document(_)));
}

#[test]
fn messages_show_long_names_cut_and_control_characters_escaped() {
    let long = "k".repeat(10_000);
    let r = reject(&rec(json!({ format!("${long}"): 1 })));
    assert!(r.to_string().len() < 500, "{}", r.to_string().len());
    assert!(r.to_string().contains("(10001 bytes)"));
    let r = reject(&rec(json!({"createdAt": "\u{0}".repeat(5000)})));
    assert!(r.to_string().len() < 1500);
    assert_eq!(shown("a\u{0}\n"), r#""a\0\n""#);
}

#[test]
fn rejected_records_never_keep_plaintext() {
    let rec = json!({"id":7,"email":"a@b.c","password":"hunter22"});
    let copy = reject_copy(&spec(0), &rec);
    let pw = copy.as_document().unwrap().get_str("password").unwrap();
    assert!(is_bcrypt(pw));
    assert!(!copy.to_string().contains("hunter22"));
}

#[test]
fn refused_writes_keep_their_own_reason_code() {
    let refused = |code| Reject::Refused { id: "u1".into(), code, detail: "x".into() };
    assert_eq!(refused(121).code(), "validation_failed");
    assert_eq!(refused(10334).code(), "document_too_large");
    assert_eq!(refused(17419).code(), "document_too_large");
    assert_eq!(refused(2).code(), "write_refused");
    assert_eq!(Reject::Contended { id: "u1".into() }.code(), "write_contended");
    assert!(refused(121).to_string().contains("error 121"));
}

#[test]
fn postgres_refusals_carry_their_sqlstate() {
    use super::reject::{sqlstate, sqlstate_code};
    for state in ["23503", "22001", "22P02", "23505", "22003", "23502"] {
        assert_eq!(sqlstate(sqlstate_code(state)).as_deref(), Some(state));
    }
    assert_eq!(sqlstate(11000), None);
    let refused = |state| Reject::Refused { id: "j1".into(), code: sqlstate_code(state), detail: "x".into() };
    assert_eq!(refused("23503").code(), "missing_parent");
    assert_eq!(refused("22001").code(), "value_too_long");
    assert_eq!(refused("22003").code(), "number_out_of_range");
    assert_eq!(refused("23502").code(), "not_null_missing");
    let text = refused("23503").to_string();
    assert!(text.starts_with("PostgreSQL refused row") && text.contains("(SQLSTATE 23503): x"), "{text}");
}

#[test]
fn naive_times_are_read_in_the_zone_given() {
    let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let at = |s: &str, z| parse_date_in(s, z).map(|d| d.try_to_rfc3339_string().unwrap());
    // Summer (UTC+2) and winter (UTC+1) in Berlin; UTC by default.
    assert_eq!(at("2025-07-01T12:00:00", berlin).as_deref(), Some("2025-07-01T10:00:00Z"));
    assert_eq!(at("2025-01-01T12:00:00", berlin).as_deref(), Some("2025-01-01T11:00:00Z"));
    assert_eq!(at("2025-07-01T12:00:00", chrono_tz::UTC).as_deref(), Some("2025-07-01T12:00:00Z"));
    // A time with an offset is that time, whatever the zone.
    assert_eq!(at("2025-07-01T12:00:00Z", berlin).as_deref(), Some("2025-07-01T12:00:00Z"));
    // The hour the clocks go back happens twice: the first; the hour they skip never happens.
    assert_eq!(at("2025-10-26T02:30:00", berlin).as_deref(), Some("2025-10-26T00:30:00Z"));
    assert_eq!(at("2025-03-30T02:30:00", berlin), None);
    // A layout with a zone maps its records so; a bad name is refused.
    let mut layout = Layout::builtin().with_naive_timezone("Europe/Berlin").unwrap();
    let spec = layout.sources.remove(0);
    let m =
        map_record(&spec, "fp", &json!({"id": "u1", "email": "a@x.io", "createdAt": "2025-07-01T12:00:00"})).unwrap();
    assert_eq!(m.doc.get_datetime("createdAt").unwrap().try_to_rfc3339_string().unwrap(), "2025-07-01T10:00:00Z");
    assert_ne!(fingerprint(&spec), fingerprint(&Layout::builtin().sources[0]), "a zone changes the mapping");
    assert!(Layout::builtin().with_naive_timezone("Mars/Olympus").is_err());
    assert_eq!(
        fingerprint(&Layout::builtin().with_naive_timezone("UTC").unwrap().sources[0]),
        fingerprint(&Layout::builtin().sources[0])
    );
}
