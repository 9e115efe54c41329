//! Index definitions: `indexes/<collection>.json`, built in as defaults, one
//! `createIndexes` spec per index. Pure data; a target applies them
//! ([`crate::sink::indexes`] for MongoDB).

use std::collections::BTreeMap;
use std::path::Path;

use bson::{Bson, Document};

use crate::error::Fatal;

const BUILTIN: &[(&str, &str)] = &[
    ("users", include_str!("../indexes/users.json")),
    ("datasets", include_str!("../indexes/datasets.json")),
    ("training_jobs", include_str!("../indexes/training_jobs.json")),
    ("audit_log", include_str!("../indexes/audit_log.json")),
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
