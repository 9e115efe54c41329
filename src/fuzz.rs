//! Property tests over parse-and-map (the fuzz target; `cargo fuzz` needs a
//! nightly toolchain, which these machines cannot fetch): no input, however
//! broken, makes the pipeline panic. Seeded with the committed corpus in
//! `tests/corpus/`, plus random bytes and random JSON.

use proptest::prelude::*;
use serde_json::Value;

use crate::layout::{Layout, Shape};
use crate::mapping::map_record;
use crate::source::parse;

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
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

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
