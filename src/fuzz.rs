//! Property tests over parse-and-map (the fuzz target; `cargo fuzz` needs a
//! nightly toolchain, which these machines cannot fetch): no input, however
//! broken, makes the pipeline panic. Seeded with the committed corpus in
//! `tests/corpus/`, plus random bytes and random JSON.
//!
//! And the mapping's promise: every record either maps to a document MongoDB
//! will store (it serialises as BSON, no field name holds a NUL, is empty,
//! starts with `$` or holds a `.`, at most 100 levels deep, at most 16 MiB with
//! `_mirror` added, no `_id`/`_mirror` of the record's own), or is a `Reject`
//! with a known code, and its stored reject copy fits too. Cases per property:
//! `PROPTEST_CASES` (default below; `PROPTEST_CASES=20000 cargo test --lib fuzz`
//! for a long run).

use proptest::prelude::*;
use serde_json::Value;

use crate::layout::{Layout, Shape, SourceSpec};
use crate::mapping::{self, map_record, Mapped, MAX_DOCUMENT_BYTES, MAX_NESTING};
use crate::source::parse;

/// `PROPTEST_CASES` if set (the long mode), else the bounded CI default.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default)
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("tests/corpus exists") {
        let p = e.expect("corpus entry").path();
        out.push(std::fs::read(&p).expect("corpus file"));
    }
    out.sort();
    out
}

/// Run everything a file goes through before it reaches MongoDB.
fn pipeline(bytes: &[u8]) {
    let layout = Layout::builtin();
    for (i, spec) in layout.sources.iter().enumerate() {
        let shape = if i == 2 { Shape::Object } else { Shape::Array };
        if let Ok(records) = parse(bytes, shape) {
            for r in records {
                let _ = map_record(spec, "fp", &r.value);
                let _ = crate::mapping::reject_copy(spec, &r.value);
            }
        }
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<String>().prop_map(Value::String),
        Just(Value::String("a\u{0}b".into())),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        any::<u64>().prop_map(|i| Value::Number(i.into())),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("2025-10-13T12:00:00.000Z"),
            Just("2025-10-13"),
            Just("$2b$10$abc"),
            Just("hunter2"),
            Just("$x"),
            Just("a.b")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_string()),
                    Just("job_id".to_string()),
                    Just("email".to_string()),
                    Just("password".to_string()),
                    Just("createdAt".to_string()),
                    Just("updated_at".to_string()),
                    Just("size".to_string()),
                    Just("params".to_string()),
                    Just("_id".to_string()),
                    Just("_mirror".to_string()),
                    Just(String::new()),
                    Just("a\u{0}".to_string()),
                    any::<String>(),
                    "[a-z$.]{0,6}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn the_committed_corpus_goes_through_without_panicking() {
    for bytes in corpus() {
        pipeline(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        pipeline(&bytes);
    }

    #[test]
    fn mutated_corpus_files_never_panic(seed in 0usize..64, flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let corpus = corpus();
        let mut bytes = corpus[seed % corpus.len()].clone();
        for (at, b) in flips {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = b;
            }
        }
        pipeline(&bytes);
    }

    #[test]
    fn random_json_records_never_panic(v in json_value()) {
        let text = serde_json::to_vec(&Value::Array(vec![v.clone()])).expect("serializable");
        pipeline(&text);
        pipeline(&serde_json::to_vec(&v).expect("serializable"));
    }
}

// ---- The mapping's promise over generated records -------------------------

/// Every reason code a record (not a whole file) can be rejected with.
const RECORD_CODES: &[&str] = &[
    "not_an_object",
    "missing_id",
    "id_not_string",
    "empty_id",
    "nul_in_id",
    "reserved_field",
    "bad_date",
    "bad_type",
    "forbidden_key",
    "nul_in_key",
    "empty_key",
    "too_deep",
    "document_too_large",
    "malformed_bcrypt",
    "malformed_hash",
    "missing_email",
    "duplicate_key",
];

/// Number forms as JSON text: what a file may hold, not just what serde writes.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|i| i.to_string()),
        any::<i32>().prop_map(|i| i.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        prop::sample::select(vec![
            "0",
            "-0",
            "-0.0",
            "1.0",
            "1e0",
            "1E+2",
            "1e-7",
            "0.1e1",
            "5e9",
            "5.0e9",
            "1e300",
            "-1e-300",
            "2147483647",
            "2147483648",
            "-2147483649",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890",
            "4.9e-324",
            "1.7976931348623157e308",
            "9007199254740993",
            "1760356800000",
            "-62135596800000",
            "253402300800000",
        ])
        .prop_map(str::to_string),
    ]
}

/// Dates in every shape a file may hold them, good and bad.
fn date_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "2025-10-13T12:00:00.000Z",
            "2025-10-13T14:00:00+02:00",
            "2025-10-13T12:00:00",
            "2025-10-13 12:00:00.5",
            "2025-10-13T12:00",
            "2025-10-13",
            "2025-10-13T12:00:00.123456789Z",
            "2025-10-13T12:00:00-00:00",
            "2016-12-31T23:59:60Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "+10000-01-01T00:00:00Z",
            "2025-13-45",
            "2025-02-30",
            "13/10/2025",
            "yesterday",
            "",
            " 2025-10-13 ",
            "2025-10-13T25:00:00Z",
            "2025-10-13T12:00:00+99:00",
            "1760356800000",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        any::<u64>().prop_map(|i| Value::Number(i.into())),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        Just(Value::Null),
        Just(Value::Bool(true)),
        any::<String>().prop_map(Value::String),
    ]
}

/// Passwords: plaintext, every recognised hash, placeholders, malformed ones.
fn password_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "!",
            "*",
            "!!",
            " ",
            "hunter22",
            "$2b$10$J1JbpLNyErs2Vewf4LDN4u/Os0zWvTlg5el0sAu.ZUnk6lHagoW.u",
            "$2b$10$short",
            "$2x$10$J1JbpLNyErs2Vewf4LDN4u/Os0zWvTlg5el0sAu.ZUnk6lHagoW.u",
            "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
            "$argon2id$v=19$m=65536",
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
            "$7$C6..../....SodiumChloride$kBGj9fHznVYFQMEn/qDCfrDevf9YDtcDdKvEqHJLV8D",
            "$pbkdf2-sha256$29000$9t7be09prfXee2/NOUeotQ$Y.RDnnq8vsezSZSKy1QNy6xhKPdoBIwc.0XDdRm9sJ8",
            "pbkdf2_sha256$260000$abcdefghijklmnopqrstuv$1ZAUFsJQFMLS4wdT9XUyqmHbA394+4a0q2JzR+XU5mE=",
            "$5$saltstring$gpdvZHQ.qundoWJjAZwNzbBrhvpB73knRq.7HdH6Y9.",
            "!$5$saltstring$gpdvZHQ.qundoWJjAZwNzbBrhvpB73knRq.7HdH6Y9.",
            "$6$bad",
            "pw\u{0}nul",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        Just(Value::Null),
        any::<String>().prop_map(Value::String),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
    ]
}

/// A key a platform's record might hold, including every kind MongoDB refuses.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => "[a-z][a-zA-Z0-9_]{0,8}",
        1 => any::<String>(),
        1 => prop::sample::select(vec![
            "_id", "_mirror", "", "$set", "a.b", ".", "$", "a\u{0}b", "\u{0}", "é", "🦀", "__proto__", "constructor",
            "$docmirror.duplicate_keys",
        ])
        .prop_map(str::to_string),
    ]
}

/// `levels` objects or arrays around a leaf.
fn deep(levels: usize, arrays: bool) -> Value {
    let mut v = Value::from(1);
    for i in 0..levels {
        v = if arrays && i % 2 == 0 { Value::Array(vec![v]) } else { serde_json::json!({ "a": v }) };
    }
    v
}

/// A huge string: mostly just under or over what fits, sometimes merely big.
fn huge() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![1usize << 20, (16 << 20) - 20_000, 16 << 20, (16 << 20) + 1])
        .prop_map(|n| Value::String("x".repeat(n)))
}

/// One record of any of the three sources, as JSON text (numbers in any form).
fn record_text() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        6 => "[a-z0-9_]{1,12}".prop_map(Value::String),
        1 => any::<String>().prop_map(Value::String),
        1 => Just(Value::String("u\u{0}2".into())),
        1 => Just(Value::String(String::new())),
        1 => any::<i64>().prop_map(|i| Value::Number(i.into())),
        1 => Just(Value::Null),
    ];
    let field = prop_oneof![
        4 => (key(), json_value()),
        2 => (prop::sample::select(vec!["createdAt", "updatedAt", "uploaded_at", "deleted_at", "created_at", "updated_at", "completed_at"]).prop_map(str::to_string), date_value()),
        2 => (Just("password".to_string()), password_value()),
        1 => (prop::sample::select(vec!["size", "params", "email"]).prop_map(str::to_string), json_value()),
        1 => (key(), (90usize..=110, any::<bool>()).prop_map(|(n, a)| deep(n, a))),
    ];
    let numbers = prop::collection::vec((key(), number_text()), 0..4);
    let big = prop::option::weighted(0.04, huge());
    (id, prop::collection::vec(field, 0..10), numbers, big).prop_map(|(id, fields, numbers, big)| {
        let mut obj = serde_json::Map::new();
        // Both id fields, so that each source's mapping gets past the id.
        obj.insert("id".to_string(), id.clone());
        obj.insert("job_id".to_string(), id);
        obj.insert("email".into(), Value::String("A@x.io".into()));
        for (k, v) in fields {
            obj.insert(k, v);
        }
        if let Some(b) = big {
            obj.insert("blob".into(), b);
        }
        // Raw number texts go in as written, after the opening brace.
        let mut text = serde_json::to_string(&Value::Object(obj)).expect("serializable");
        let raw: String = numbers.iter().map(|(k, n)| format!("{}:{n},", Value::String(k.clone()))).collect();
        text.insert_str(1, &raw);
        text
    })
}

/// Field names at every depth, and the nesting depth of the document.
fn walk_keys(d: &bson::Document, level: usize, keys: &mut Vec<String>, max_level: &mut usize) {
    *max_level = (*max_level).max(level);
    for (k, v) in d {
        keys.push(k.clone());
        walk_value(v, level, keys, max_level);
    }
}

fn walk_value(v: &bson::Bson, level: usize, keys: &mut Vec<String>, max_level: &mut usize) {
    match v {
        bson::Bson::Document(d) if !d.is_empty() => walk_keys(d, level + 1, keys, max_level),
        bson::Bson::Array(items) if !items.is_empty() => {
            *max_level = (*max_level).max(level + 1);
            for i in items {
                walk_value(i, level + 1, keys, max_level);
            }
        }
        _ => {}
    }
}

/// The document as `reconcile::insert_op` writes it: password hashed (a
/// bcrypt-sized stand-in), `_mirror` added with a source path as long as a path can be.
fn as_written(m: &Mapped) -> bson::Document {
    let mut d = m.doc.clone();
    if let (Some(_), Some(f)) = (&m.plaintext, m.fields().last()) {
        if !d.contains_key(f) {
            d.insert(f.clone(), "$2b$10$".to_string() + &"x".repeat(53));
        }
    }
    d.insert(
        "_mirror",
        bson::doc! { "source": "s".repeat(4096), "hash": &m.hash, "fields": m.fields(), "at": bson::DateTime::now() },
    );
    d
}

/// The property, for one record of one source.
fn check_record(spec: &SourceSpec, value: &Value) -> Result<(), TestCaseError> {
    match map_record(spec, "fp", value) {
        Ok(m) => {
            let d = as_written(&m);
            let bytes = bson::to_vec(&d).map_err(|e| TestCaseError::fail(format!("does not serialise: {e}")))?;
            prop_assert!(bytes.len() <= MAX_DOCUMENT_BYTES, "{} bytes", bytes.len());
            prop_assert!(bytes.len() <= mapping::stored_size_bound(&m), "the bound is not a bound");
            prop_assert_eq!(mapping::document_size(&m.doc), bson::to_vec(&m.doc).map(|b| b.len()).unwrap_or(0));
            let (mut keys, mut level) = (Vec::new(), 0);
            walk_keys(&m.doc, 1, &mut keys, &mut level);
            prop_assert!(level <= MAX_NESTING, "nesting {}", level);
            for k in &keys {
                prop_assert!(
                    !k.contains('\0') && !k.is_empty() && !k.starts_with('$') && !k.contains('.'),
                    "key {:?}",
                    k
                );
            }
            prop_assert!(!m.id.contains('\0'));
            prop_assert_eq!(m.doc.get_str("_id").ok(), Some(m.id.as_str()));
            let own = value.as_object().expect("mapped records are objects");
            prop_assert!(!own.contains_key("_mirror") && !own.contains_key("_id"), "reserved field mapped");
            // A plaintext password never sits in the document, and only plaintext is held apart.
            if let Some(p) = &m.plaintext {
                prop_assert_eq!(mapping::password_form(p.expose()), mapping::PasswordForm::Plaintext);
            }
        }
        Err(r) => {
            prop_assert!(RECORD_CODES.contains(&r.code()), "unknown code {}", r.code());
            let reason = r.to_string();
            prop_assert!(!reason.is_empty() && reason.len() < 4096, "reason of {} bytes", reason.len());
            // The reject itself can always be stored.
            let copy = mapping::reject_copy(spec, value);
            let stored = bson::doc! { "_id": "k", "reason": reason, "record": copy };
            let bytes = bson::to_vec(&stored).map_err(|e| TestCaseError::fail(format!("reject copy: {e}")))?;
            prop_assert!(bytes.len() <= MAX_DOCUMENT_BYTES / 8, "reject of {} bytes", bytes.len());
            let (mut keys, mut level) = (Vec::new(), 0);
            walk_keys(&stored, 1, &mut keys, &mut level);
            prop_assert!(level <= MAX_NESTING, "reject nesting {}", level);
            prop_assert!(keys.iter().all(|k| !k.contains('\0')));
        }
    }
    Ok(())
}

/// Parse the text as each source would and check every record.
fn check_text(text: &str) -> Result<(), TestCaseError> {
    let layout = Layout::builtin();
    for spec in &layout.sources {
        let bytes = if spec.shape == Shape::Array { format!("[{text}]") } else { text.to_string() };
        if let Ok(records) = parse(bytes.as_bytes(), spec.shape) {
            for r in records {
                check_record(spec, &r.value)?;
            }
        }
    }
    Ok(())
}

/// Shrunk failures, kept as fixed cases.
#[test]
fn fixed_cases_from_shrunk_failures() {
    let cases: &[&str] = &[
        r#"{"id":"u2","email":"a@x.io","a\u0000b":1}"#,
        r#"{"id":"u\u00002","email":"a@x.io"}"#,
        r#"{"id":"u3","email":"a@x.io","_id":"x"}"#,
        r#"{"id":"u3","email":"a@x.io","_mirror":{"hash":"x"}}"#,
        r#"{"job_id":"j","":1}"#,
        r#"{"id":"u","email":"a@x.io","password":null}"#,
        r#"{"id":"u","email":"a@x.io","password":""}"#,
        r#"{"job_id":"j","params":{"a":[{"b.c":1}]}}"#,
    ];
    for c in cases {
        check_text(c).unwrap_or_else(|e| panic!("{c}: {e}"));
    }
    let deep_job = format!(r#"{{"job_id":"j","x":{}}}"#, deep(100, true));
    check_text(&deep_job).unwrap_or_else(|e| panic!("deep: {e}"));
    let big = format!(r#"{{"job_id":"j","blob":"{}"}}"#, "x".repeat(16 << 20));
    check_text(&big).unwrap_or_else(|e| panic!("big: {e}"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    #[test]
    fn every_record_maps_to_a_storable_document_or_a_coded_reject(text in record_text()) {
        check_text(&text)?;
    }

    #[test]
    fn every_random_value_maps_or_is_rejected_with_a_code(v in json_value()) {
        let layout = Layout::builtin();
        for spec in &layout.sources {
            check_record(spec, &v)?;
        }
    }
}
