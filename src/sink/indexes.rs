//! Index definitions (`indexes/<collection>.json`, built in as defaults) and
//! applying them idempotently with `createIndexes` before the first write.

use std::collections::BTreeMap;
use std::path::Path;

use bson::{doc, Bson, Document};

use super::{Sink, SinkError, DUPLICATE_KEY};
use crate::error::Fatal;

const BUILTIN: &[(&str, &str)] = &[
    ("users", include_str!("../../indexes/users.json")),
    ("datasets", include_str!("../../indexes/datasets.json")),
    ("training_jobs", include_str!("../../indexes/training_jobs.json")),
    ("audit_log", include_str!("../../indexes/audit_log.json")),
];

/// Index definitions by collection, each as the `createIndexes` spec
/// (`{name, key, unique?, ...}`).
#[derive(Debug, Clone, Default)]
pub struct IndexSet {
    pub by_collection: BTreeMap<String, Vec<Document>>,
}

impl IndexSet {
    pub fn builtin() -> Self {
        let mut set = IndexSet::default();
        for (coll, text) in BUILTIN {
            // Checked by a unit test; a failure here is a build defect.
            let specs = parse(text).unwrap_or_else(|e| panic!("built-in indexes/{coll}.json: {e}"));
            set.by_collection.insert((*coll).to_string(), specs);
        }
        set
    }

    /// Every `*.json` file in `dir`; the file stem is the collection.
    pub fn from_dir(dir: &Path) -> Result<Self, Fatal> {
        let mut set = IndexSet::default();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Fatal::Config(format!("cannot read index folder {}: {e}", dir.display())))?;
        for entry in entries {
            let path = entry.map_err(|e| Fatal::Config(format!("{}: {e}", dir.display())))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(coll) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|e| Fatal::Config(format!("{}: {e}", path.display())))?;
            let specs = parse(&text).map_err(|e| Fatal::Config(format!("{}: {e}", path.display())))?;
            set.by_collection.insert(coll.to_string(), specs);
        }
        Ok(set)
    }

    /// Single-field unique indexes of a collection, as field names.
    pub fn unique_fields(&self, coll: &str) -> Vec<String> {
        self.by_collection
            .get(coll)
            .into_iter()
            .flatten()
            .filter(|spec| spec.get_bool("unique").unwrap_or(false))
            .filter_map(|spec| {
                let key = spec.get_document("key").ok()?;
                (key.len() == 1).then(|| key.keys().next().cloned()).flatten()
            })
            .collect()
    }

    /// Create every index (a no-op for those that already exist).
    pub async fn apply(&self, sink: &Sink) -> Result<(), Fatal> {
        for (coll, specs) in &self.by_collection {
            for spec in specs {
                let name = spec.get_str("name").unwrap_or("?").to_string();
                let cmd = doc! { "createIndexes": coll.as_str(), "indexes": [spec.clone()] };
                let result = sink
                    .retry("createIndexes", || {
                        let db = sink.database().clone();
                        let cmd = cmd.clone();
                        async move { db.run_command(cmd).await }
                    })
                    .await;
                match result {
                    Ok(_) => {}
                    Err(SinkError::Permanent(msg)) => return Err(explain(sink, coll, &name, spec, &msg).await),
                    Err(other) => return Err(other.into()),
                }
            }
            tracing::debug!(collection = %coll, indexes = specs.len(), "Indexes in place");
        }
        Ok(())
    }
}

fn parse(text: &str) -> Result<Vec<Document>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let serde_json::Value::Array(items) = v else {
        return Err("expected an array of index definitions".into());
    };
    items
        .iter()
        .map(|item| {
            let Bson::Document(d) = Bson::try_from(item.clone()).map_err(|e| e.to_string())? else {
                return Err("each index definition must be an object".into());
            };
            if d.get_str("name").is_err() || d.get_document("key").is_err() {
                return Err("each index needs a \"name\" and a \"key\"".into());
            }
            // JSON numbers come in as Int32/Int64/Double; index keys want ints.
            Ok(d)
        })
        .collect()
}

/// Turn a failed index build into an error a person can act on: for a unique
/// index, list the values that clash and the documents holding them.
async fn explain(sink: &Sink, coll: &str, name: &str, spec: &Document, msg: &str) -> Fatal {
    let unique = spec.get_bool("unique").unwrap_or(false);
    let key = spec.get_document("key").cloned().unwrap_or_default();
    if unique && (msg.contains(&DUPLICATE_KEY.to_string()) || msg.to_lowercase().contains("duplicate key")) {
        let group_id: Document = key.keys().map(|k| (k.clone(), Bson::String(format!("${k}")))).collect();
        let pipeline = vec![
            doc! { "$group": { "_id": group_id, "n": { "$sum": 1 }, "ids": { "$push": "$_id" } } },
            doc! { "$match": { "n": { "$gt": 1 } } },
            doc! { "$limit": 10 },
        ];
        let clashes = match sink.collection(coll).aggregate(pipeline).await {
            Ok(cursor) => {
                use futures_util::TryStreamExt;
                cursor
                    .try_collect::<Vec<_>>()
                    .await
                    .map(|rows| {
                        rows.iter()
                            .map(|r| {
                                format!(
                                    "{} held by {}",
                                    r.get("_id").map(|v| v.to_string()).unwrap_or_default(),
                                    r.get("ids").map(|v| v.to_string()).unwrap_or_default()
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_default()
            }
            Err(_) => String::new(),
        };
        return Fatal::Index(format!(
            "cannot build unique index {name:?} on {coll} {key}: documents already in MongoDB share values: {}. Fix or remove the duplicates, then run again",
            if clashes.is_empty() { msg.to_string() } else { clashes }
        ));
    }
    Fatal::Index(format!("cannot build index {name:?} on {coll} {key}: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_indexes_match_the_guide() {
        let set = IndexSet::builtin();
        assert_eq!(set.unique_fields("users"), ["email"]);
        let names = |c: &str| -> Vec<String> {
            set.by_collection[c].iter().map(|d| d.get_document("key").unwrap().keys().next().unwrap().clone()).collect()
        };
        assert!(names("datasets").starts_with(&["uploaded_by".to_string(), "uploaded_at".to_string()]));
        assert!(names("training_jobs").starts_with(&[
            "user_id".to_string(),
            "status".to_string(),
            "created_at".to_string()
        ]));
        assert_eq!(names("audit_log"), ["user_id", "created_at"]);
    }

    #[test]
    fn bad_index_files_are_refused() {
        assert!(parse("{}").is_err());
        assert!(parse(r#"[{"key":{"a":1}}]"#).is_err());
        assert!(parse(r#"[{"name":"a","key":{"a":1}}]"#).is_ok());
    }
}
