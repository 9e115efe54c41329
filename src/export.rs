//! `export`: the way back. MongoDB written into the platform's own file
//! layout (`data/users.json`, `data/datasets/metadata.json`,
//! `artifacts/jobs/<job>.json`), in the format the app reads and writes:
//! JSON as `JSON.stringify(x, null, 2)` writes it, dates as `toISOString()`
//! writes them, numbers as numbers, the fields the app wrote only in MongoDB
//! included, docmirror's `_id` and `_mirror` left out. Each file is written
//! atomically (a temporary file, fsync, rename), so the app never reads half
//! a file; with `--overwrite`, only files whose content changes are replaced.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bson::{Bson, Document};
use serde_json::{Map, Value};

use crate::error::Fatal;
use crate::layout::{Layout, Shape, SourceSpec, MIRROR_FIELD};
use crate::reconcile::target::Inspect;

/// What an export did.
#[derive(Debug, Default)]
pub struct Exported {
    pub records: u64,
    pub files: u64,
    /// Files written (new or changed).
    pub written: u64,
    /// Files left alone: already holding exactly this content.
    pub unchanged: u64,
    /// Files removed because no document backs them any more (`reverse` only).
    pub removed: u64,
}

impl Exported {
    pub fn add(&mut self, o: &Exported) {
        self.records += o.records;
        self.files += o.files;
        self.written += o.written;
        self.unchanged += o.unchanged;
        self.removed += o.removed;
    }
}

/// Export every source's collection into `out`.
pub async fn export<T: Inspect>(layout: &Layout, sink: &T, out: &Path, overwrite: bool) -> Result<Exported, Fatal> {
    check_out(out, overwrite)?;
    let mut done = Exported::default();
    for spec in &layout.sources {
        done.add(&export_source(spec, sink, out, false).await?.0);
    }
    Ok(done)
}

/// Write one source's collection into its files below `out`, replacing only
/// files whose content changes. With `prune`, a one-record-per-file source's
/// files that no document backs any more are removed (`reverse`). Returns
/// what it did and, for a one-record-per-file source, each file (path below
/// the source's root) with its record's id (as [`id_key`]).
///
/// Documents become the files' bytes as they arrive, so memory holds the
/// rendered files, not the collection's documents as well.
pub async fn export_source<T: Inspect>(
    spec: &SourceSpec,
    sink: &T,
    out: &Path,
    prune: bool,
) -> Result<(Exported, BTreeMap<String, String>), Fatal> {
    let root = out.join(spec.root.label());
    let files = match spec.shape {
        Shape::Array => {
            let records: Vec<Value> = sink.documents_map(spec, |d| Some(record(spec, &d))).await?;
            let n = records.len();
            (n, vec![FileOut { rel: spec.path.clone(), key: None, bytes: render(&Value::Array(records))? }])
        }
        Shape::Object => {
            let items: Vec<Result<FileOut, Fatal>> = sink.documents_map(spec, |d| Some(object_file(spec, &d))).await?;
            let files = items.into_iter().collect::<Result<Vec<_>, _>>()?;
            (files.len(), files)
        }
    };
    let (records, files) = files;
    let written = write_many(&root, &files)?;
    let count = crate::summary::count;
    let mut done = Exported {
        records: count(records),
        files: count(files.len()),
        written,
        unchanged: count(files.len()).saturating_sub(written),
        removed: 0,
    };
    let names: BTreeMap<String, String> = files.into_iter().filter_map(|f| Some((f.rel, f.key?))).collect();
    if prune && spec.shape == Shape::Object {
        for rel in source_files_in(spec, &root)? {
            if !names.contains_key(&rel) {
                remove_file(&root.join(&rel))?;
                done.removed += 1;
            }
        }
    }
    Ok((done, names))
}

/// One file to write.
#[derive(Debug)]
pub struct FileOut {
    /// Its path below the source's root.
    pub rel: String,
    /// The id of its record (one-record-per-file sources), as [`id_key`].
    pub key: Option<String>,
    pub bytes: Vec<u8>,
}

/// The file of one document of a one-record-per-file source.
pub fn object_file(spec: &SourceSpec, d: &Document) -> Result<FileOut, Fatal> {
    let (dir, _) = spec.split_path();
    let id = d.get("_id").map(id_key).unwrap_or_default();
    let name = file_name(spec, d).ok_or_else(|| {
        Fatal::Config(format!("{} document {id} has no id that can name a file in {dir}", spec.collection))
    })?;
    let rel = if dir.is_empty() { name } else { format!("{dir}/{name}") };
    Ok(FileOut { rel, key: Some(id), bytes: render(&record(spec, d))? })
}

/// An id as a key: a string id as itself, anything else as its JSON.
pub fn id_key(id: &Bson) -> String {
    match id {
        Bson::String(s) => s.clone(),
        other => other.clone().into_relaxed_extjson().to_string(),
    }
}

/// Threads that write (and fsync) files at once: a disk commits concurrent
/// fsyncs together, so many small files are written several times faster.
const WRITERS: usize = 8;

/// Write files below `root`, each atomically and only when its content
/// changes, several at a time; each folder is synced once at the end (the
/// renames' durability). Returns how many were written.
pub fn write_many(root: &Path, files: &[FileOut]) -> Result<u64, Fatal> {
    let per = files.len().div_ceil(WRITERS).max(1);
    let results: Vec<Result<(u64, Vec<PathBuf>), Fatal>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per)
            .map(|chunk| {
                scope.spawn(move || {
                    let (mut written, mut dirs) = (0u64, Vec::new());
                    for f in chunk {
                        let path = root.join(&f.rel);
                        if std::fs::read(&path).is_ok_and(|old| old == f.bytes) {
                            continue;
                        }
                        write_synced(&path, &f.bytes)
                            .map_err(|e| Fatal::Source(format!("cannot write {}: {e}", path.display())))?;
                        written += 1;
                        if let Some(dir) = path.parent().filter(|d| !dirs.iter().any(|x: &PathBuf| x == d)) {
                            dirs.push(dir.to_path_buf());
                        }
                    }
                    Ok((written, dirs))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Fatal::Internal("a file writer thread panicked".into()))))
            .collect()
    });
    let mut written = 0;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for r in results {
        let (n, d) = r?;
        written += n;
        dirs.extend(d);
    }
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Fatal::Source(format!("cannot sync the folder {}: {e}", dir.display())))?;
    }
    Ok(written)
}

/// A file's content as the app writes it: `JSON.stringify(x, null, 2)`.
pub fn render(content: &Value) -> Result<Vec<u8>, Fatal> {
    serde_json::to_vec_pretty(content).map_err(|e| Fatal::Internal(format!("cannot render JSON: {e}")))
}

/// Write `bytes` into `path` atomically unless it already holds exactly
/// them; whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool, Fatal> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    write_atomically(path, bytes).map_err(|e| Fatal::Source(format!("cannot write {}: {e}", path.display())))?;
    Ok(true)
}

/// Remove a file (already gone is fine), durably.
pub fn remove_file(path: &Path) -> Result<(), Fatal> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Fatal::Source(format!("cannot remove {}: {e}", path.display()))),
    }
}

/// The files of a one-record-per-file source now in its folder below `root`
/// (paths below `root`); none when the folder does not exist.
pub fn source_files_in(spec: &SourceSpec, root: &Path) -> Result<Vec<String>, Fatal> {
    let (dir, _) = spec.split_path();
    let folder = if dir.is_empty() { root.to_path_buf() } else { root.join(dir) };
    let entries = match std::fs::read_dir(&folder) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Fatal::Source(format!("cannot list {}: {e}", folder.display()))),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Fatal::Source(format!("cannot list {}: {e}", folder.display())))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if spec.matches_file_name(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            out.push(if dir.is_empty() { name } else { format!("{dir}/{name}") });
        }
    }
    Ok(out)
}

/// `out` must be new or empty, unless `--overwrite`.
fn check_out(out: &Path, overwrite: bool) -> Result<(), Fatal> {
    let empty = match std::fs::read_dir(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Fatal::Source(format!("cannot read {}: {e}", out.display()))),
        Ok(mut entries) => entries.next().is_none(),
    };
    if empty || overwrite {
        return Ok(());
    }
    Err(Fatal::Config(format!(
        "{} is not empty; export into a new or empty folder, or pass --overwrite to update it",
        out.display()
    )))
}

/// A one-record-per-file source's file name: the one it was mirrored from,
/// else `<id>.json` (or the layout's pattern around the id).
pub fn file_name(spec: &SourceSpec, d: &Document) -> Option<String> {
    let mirrored = d.get_document(MIRROR_FIELD).ok().and_then(|m| m.get_str("source").ok());
    if let Some(rel) = mirrored.filter(|rel| spec.owns_rel(rel)) {
        return rel.rsplit('/').next().map(str::to_string);
    }
    let id = match d.get("_id")? {
        Bson::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (_, pattern) = spec.split_path();
    let name = pattern.replacen('*', &id, 1);
    let safe = !id.is_empty() && !id.contains(['/', '\0']) && id != "." && id != ".." && spec.matches_file_name(&name);
    safe.then_some(name)
}

/// A document as the record the app wrote: its fields in order, without
/// docmirror's `_id` and `_mirror` (the id field holds the id).
pub fn record(spec: &SourceSpec, d: &Document) -> Value {
    let mut obj = Map::new();
    if spec.id_field != "_id" && !d.contains_key(&spec.id_field) {
        if let Some(id) = d.get("_id") {
            obj.insert(spec.id_field.clone(), value(id));
        }
    }
    for (k, v) in d {
        if (k == "_id" && spec.id_field != "_id") || k == MIRROR_FIELD {
            continue;
        }
        obj.insert(k.clone(), value(v));
    }
    Value::Object(obj)
}

/// A BSON value as the app's JSON: dates as `toISOString()` writes them.
fn value(b: &Bson) -> Value {
    match b {
        Bson::DateTime(t) => Value::String(iso(*t)),
        Bson::Int32(n) => Value::from(*n),
        Bson::Int64(n) => Value::from(*n),
        Bson::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Bson::String(s) => Value::String(s.clone()),
        Bson::Boolean(v) => Value::Bool(*v),
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Array(items) => Value::Array(items.iter().map(value).collect()),
        Bson::Document(d) => Value::Object(d.iter().map(|(k, v)| (k.clone(), value(v))).collect()),
        other => other.clone().into_relaxed_extjson(),
    }
}

/// `2025-10-13T12:00:00.123Z`: what JavaScript's `Date.prototype.toISOString()` writes.
fn iso(t: bson::DateTime) -> String {
    chrono::DateTime::from_timestamp_millis(t.timestamp_millis())
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// Write a file so that a reader sees the old content or the new, never a
/// part: a temporary file beside it, flushed to disk, renamed over it; then
/// the folder synced, so the rename is durable too.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_synced(path, bytes)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// [`write_atomically`] without the folder's sync (the caller syncs it once for many files).
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("export");
    let tmp: PathBuf = dir.join(format!(".{name}.docmirror-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn a_document_becomes_the_record_the_app_wrote() {
        let users = Layout::builtin().sources.remove(0);
        let at = bson::DateTime::parse_rfc3339_str("2025-10-13T12:00:00Z").unwrap();
        let d = doc! {
            "_id": "u1", "id": "u1", "email": "a@x.io", "createdAt": at, "n": 3_i32, "big": 5_000_000_000_i64,
            "f": 0.5, "nested": { "when": at, "list": [1_i32, "x"] }, "lastLoginAt": at,
            "_mirror": { "source": "data/users.json", "hash": "h" },
        };
        let r = record(&users, &d);
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"id":"u1","email":"a@x.io","createdAt":"2025-10-13T12:00:00.000Z","n":3,"big":5000000000,"f":0.5,"nested":{"when":"2025-10-13T12:00:00.000Z","list":[1,"x"]},"lastLoginAt":"2025-10-13T12:00:00.000Z"}"#
        );
        // A document the app made without the id field gets it back from `_id`.
        assert_eq!(record(&users, &doc! { "_id": "u9", "email": "b@x.io" })["id"], "u9");
    }

    #[test]
    fn job_files_keep_their_names_and_unsafe_ids_name_no_file() {
        let jobs = Layout::builtin().sources.remove(2);
        let d = doc! { "_id": "j1", "_mirror": { "source": "artifacts/jobs/job_2025_j1.json" } };
        assert_eq!(file_name(&jobs, &d).as_deref(), Some("job_2025_j1.json"));
        assert_eq!(file_name(&jobs, &doc! { "_id": "j2" }).as_deref(), Some("j2.json"));
        assert_eq!(file_name(&jobs, &doc! { "_id": "../etc/passwd" }), None);
        assert_eq!(file_name(&jobs, &doc! { "_id": "" }), None);
    }

    #[test]
    fn many_files_are_written_in_parallel_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let files = |tag: &str| -> Vec<FileOut> {
            (0..50)
                .map(|i| FileOut { rel: format!("jobs/j{i}.json"), key: None, bytes: format!("[{i},{tag:?}]").into() })
                .collect()
        };
        assert_eq!(write_many(dir.path(), &files("a")).unwrap(), 50);
        assert_eq!(write_many(dir.path(), &files("a")).unwrap(), 0, "unchanged files are left alone");
        let mut changed = files("a");
        changed[7].bytes = b"[7,\"b\"]".to_vec();
        assert_eq!(write_many(dir.path(), &changed).unwrap(), 1);
        assert_eq!(std::fs::read(dir.path().join("jobs/j7.json")).unwrap(), b"[7,\"b\"]");
        assert_eq!(std::fs::read_dir(dir.path().join("jobs")).unwrap().count(), 50, "no temporary file left");
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.json");
        write_atomically(&p, b"[1]").unwrap();
        write_atomically(&p, b"[1,2]").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"[1,2]");
        assert_eq!(std::fs::read_dir(dir.path().join("a")).unwrap().count(), 1, "no temporary file left");
    }
}
