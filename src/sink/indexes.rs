//! Applying index definitions to MongoDB idempotently with `createIndexes`
//! before the first write, and explaining a unique index that cannot be built.

use bson::{doc, Bson, Document};

use super::{Sink, SinkError, DUPLICATE_KEY};
use crate::error::Fatal;
use crate::indexes::IndexSet;

/// Create every index of `set` (a no-op for those that already exist).
pub async fn apply(set: &IndexSet, sink: &Sink) -> Result<(), Fatal> {
    for (coll, specs) in &set.by_collection {
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
