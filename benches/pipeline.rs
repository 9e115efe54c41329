//! Micro-benchmarks of the per-record work (parse, map, hash), so that
//! regressions show without a server: `cargo bench --bench pipeline`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use docmirror::layout::{Layout, Shape};
use docmirror::mapping::{content_hash, map_record};
use docmirror::source::parse;
use serde_json::json;

fn users_file(n: usize) -> Vec<u8> {
    let users: Vec<_> = (0..n)
        .map(|i| {
            json!({
                "id": format!("{i:032x}"), "email": format!("User{i}@Example.com"), "name": format!("User {i}"),
                "password": "$2b$10$J1JbpLNyErs2Vewf4LDN4u/Os0zWvTlg5el0sAu.ZUnk6lHagoW.u", "role": "user",
                "createdAt": "2025-09-01T08:00:00.000Z", "updatedAt": "2025-10-12T17:45:10.123Z"
            })
        })
        .collect();
    serde_json::to_vec(&users).expect("serializable")
}

fn job_file() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "job_id": "job_20251012_090000_b21c", "user_id": "u1", "dataset_id": "d1", "status": "running",
        "progress": 42.5, "epoch": 1, "step": 850, "total_steps": 2000, "loss": 1.0873, "message": "Epoch 2/3",
        "params": {"model": "gpt2", "learning_rate": 0.0001, "batch_size": 8, "epochs": 3, "lora": {"r": 8, "alpha": 16}},
        "pid": 51877, "created_at": "2025-10-12T09:00:00.000Z", "updated_at": "2025-10-12T09:41:13.002Z", "completed_at": null
    }))
    .expect("serializable")
}

fn bench(c: &mut Criterion) {
    let layout = Layout::builtin();
    let users = users_file(10_000);
    let records = parse(&users, Shape::Array).expect("valid");
    let job = job_file();

    let mut g = c.benchmark_group("users_10k");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("parse", |b| b.iter(|| parse(&users, Shape::Array).expect("valid")));
    g.bench_function("map", |b| {
        b.iter(|| records.iter().filter(|r| map_record(&layout.sources[0], "fp", &r.value).is_ok()).count())
    });
    g.bench_function("hash", |b| {
        b.iter(|| {
            records.iter().filter_map(|r| r.value.as_object()).map(|o| content_hash("fp", o, None)).collect::<Vec<_>>()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("job_file");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_and_map", |b| {
        b.iter(|| {
            let r = parse(&job, Shape::Object).expect("valid");
            map_record(&layout.sources[2], "fp", &r[0].value).is_ok()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
