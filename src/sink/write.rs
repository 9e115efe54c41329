//! The two write paths: `Client::bulk_write` (MongoDB 8.0+) and the
//! `insert`/`update`/`delete` commands every server understands, with their
//! replies turned into one [`Outcome`] per operation.

use bson::{Bson, Document, RawArrayBuf, RawDocumentBuf};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::WriteModel;
use mongodb::Namespace;

use super::{bson_i64, Sink, SinkError, WriteOp, DUPLICATE_KEY};
use crate::reconcile::target::Outcome;

impl Sink {
    pub(super) async fn bulk_write_once(&self, ops: &[WriteOp]) -> Result<Vec<Outcome>, MongoError> {
        let db = self.db.name().to_string();
        let models: Vec<WriteModel> = ops
            .iter()
            .map(|op| {
                let ns = Namespace::new(db.clone(), op.coll().to_string());
                match op {
                    WriteOp::Insert { doc, .. } => {
                        mongodb::options::InsertOneModel::builder().namespace(ns).document(doc.clone()).build().into()
                    }
                    WriteOp::Update { filter, update, upsert, .. } => mongodb::options::UpdateOneModel::builder()
                        .namespace(ns)
                        .filter(filter.clone())
                        .update(update.clone())
                        .upsert(*upsert)
                        .build()
                        .into(),
                    WriteOp::Delete { filter, .. } => {
                        mongodb::options::DeleteOneModel::builder().namespace(ns).filter(filter.clone()).build().into()
                    }
                    WriteOp::DeleteMany { filter, .. } => {
                        mongodb::options::DeleteManyModel::builder().namespace(ns).filter(filter.clone()).build().into()
                    }
                }
            })
            .collect();
        match self.client.bulk_write(models).ordered(false).verbose_results().await {
            Ok(r) => Ok(ops
                .iter()
                .enumerate()
                .map(|(i, op)| match op {
                    WriteOp::Insert { .. } => Outcome::Applied { matched: None },
                    WriteOp::Update { .. } => {
                        Outcome::Applied { matched: r.update_results.get(&i).map(|u| u.matched_count) }
                    }
                    WriteOp::Delete { .. } | WriteOp::DeleteMany { .. } => {
                        Outcome::Applied { matched: r.delete_results.get(&i).map(|d| d.deleted_count) }
                    }
                })
                .collect()),
            Err(e) => {
                let ErrorKind::BulkWrite(bw) = e.kind.as_ref() else {
                    return Err(e);
                };
                // A failure of the whole batch (network, failover) is retried as a
                // whole; per-operation errors are results.
                if std::error::Error::source(&e).is_some() && bw.write_errors.is_empty() {
                    return Err(e);
                }
                if !bw.write_concern_errors.is_empty() && bw.write_errors.is_empty() {
                    return Err(e);
                }
                let verbose = match &bw.partial_result {
                    Some(mongodb::error::PartialBulkWriteResult::Verbose(v)) => Some(v),
                    _ => None,
                };
                Ok(ops
                    .iter()
                    .enumerate()
                    .map(|(i, op)| {
                        if let Some(we) = bw.write_errors.get(&i) {
                            return classify(we.code, &self.scrub(&we.message));
                        }
                        let matched = verbose.and_then(|v| match op {
                            WriteOp::Insert { .. } => None,
                            WriteOp::Update { .. } => v.update_results.get(&i).map(|u| u.matched_count),
                            WriteOp::Delete { .. } | WriteOp::DeleteMany { .. } => {
                                v.delete_results.get(&i).map(|d| d.deleted_count)
                            }
                        });
                        Outcome::Applied { matched }
                    })
                    .collect())
            }
        }
    }

    /// The pre-8.0 path: consecutive ops of one kind on one collection become
    /// one `insert`/`update`/`delete` command, kept under the 16 MiB limit.
    pub(super) async fn commands_batch(&self, ops: &[WriteOp]) -> Result<Vec<Outcome>, SinkError> {
        let mut results = Vec::with_capacity(ops.len());
        let mut start = 0;
        while start < ops.len() {
            let (cmd, end) = command_from(ops, start)
                .map_err(|e| SinkError::Refused { code: 0, message: self.scrub(&e.to_string()) })?;
            let group = ops.get(start..end).unwrap_or_default();
            let reply = self
                .retry("write command", || {
                    let db = self.db.clone();
                    // (A copy of the encoded bytes: one allocation.)
                    let cmd = cmd.clone();
                    async move {
                        let reply = db.run_raw_command(cmd).await?;
                        match super::failover_in(&reply) {
                            Some(transient) => Err(transient),
                            None => Ok(reply),
                        }
                    }
                })
                .await?;
            results.extend(self.command_results(group, &reply)?);
            start = end.max(start + 1);
        }
        Ok(results)
    }

    fn command_results(&self, group: &[WriteOp], reply: &Document) -> Result<Vec<Outcome>, SinkError> {
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(SinkError::Permanent(format!("write concern error: {}", self.scrub(&wce.to_string()))));
        }
        let mut out: Vec<Outcome> = vec![Outcome::Applied { matched: None }; group.len()];
        let mut failed = 0u64;
        if let Ok(errors) = reply.get_array("writeErrors") {
            for e in errors.iter().filter_map(Bson::as_document) {
                let idx = e.get("index").and_then(bson_i64).and_then(|i| usize::try_from(i).ok());
                let code = e.get("code").and_then(bson_i64).and_then(|c| i32::try_from(c).ok()).unwrap_or(0);
                let msg = self.scrub(e.get_str("errmsg").unwrap_or(""));
                if let Some(slot) = idx.and_then(|i| out.get_mut(i)) {
                    *slot = classify(code, &msg);
                    failed += 1;
                }
            }
        }
        // The commands report one count for the whole group. When every op
        // that did not fail matched, each matched one document. When none matched, none did; otherwise the
        // caller checks the documents themselves.
        let n = reply.get("n").and_then(bson_i64).and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let ok_ops = u64::try_from(group.len()).unwrap_or(u64::MAX) - failed;
        let each = match n {
            _ if matches!(group.first(), Some(WriteOp::Insert { .. })) => None,
            0 => Some(0),
            n if n == ok_ops => Some(1),
            _ => None,
        };
        if let Some(each) = each {
            for slot in out.iter_mut() {
                if let Outcome::Applied { matched } = slot {
                    *matched = Some(each);
                }
            }
        }
        Ok(out)
    }
}

fn classify(code: i32, message: &str) -> Outcome {
    if code == DUPLICATE_KEY {
        Outcome::DuplicateKey { message: message.to_string() }
    } else {
        Outcome::Failed { code, message: message.to_string() }
    }
}

/// The command for the ops from `start` on that share its kind and
/// collection, up to [`MAX_COMMAND_BYTES`], and where they end. Each op's
/// documents are encoded once, straight into the command's bytes: no copy
/// of them is made as documents (a mapped document takes about five times
/// its encoded size in memory). An op that cannot be encoded refuses the
/// command, and [`Sink::write`] isolates it.
fn command_from(ops: &[WriteOp], start: usize) -> Result<(RawDocumentBuf, usize), bson::raw::Error> {
    let Some(first) = ops.get(start) else { return Ok((RawDocumentBuf::new(), start)) };
    let mut items = RawArrayBuf::new();
    let (mut end, mut bytes) = (start, 0usize);
    while let Some(op) = ops.get(end) {
        if op.kind() != first.kind() || op.coll() != first.coll() || (end > start && bytes >= MAX_COMMAND_BYTES) {
            break;
        }
        let item = command_item(op)?;
        bytes += item.as_bytes().len() + 64;
        items.push(item);
        end += 1;
    }
    let (verb, list) = match first {
        WriteOp::Insert { .. } => ("insert", "documents"),
        WriteOp::Update { .. } => ("update", "updates"),
        WriteOp::Delete { .. } | WriteOp::DeleteMany { .. } => ("delete", "deletes"),
    };
    let mut cmd = RawDocumentBuf::new();
    cmd.append(verb, first.coll());
    cmd.append(list, items);
    cmd.append("ordered", false);
    Ok((cmd, end))
}

/// A command's list is kept under this many bytes (the server's limit is 16 MiB).
const MAX_COMMAND_BYTES: usize = 12 * 1024 * 1024;

/// One op as its command's list holds it.
fn command_item(op: &WriteOp) -> Result<RawDocumentBuf, bson::raw::Error> {
    let raw = RawDocumentBuf::from_document;
    Ok(match op {
        WriteOp::Insert { doc, .. } => raw(doc)?,
        WriteOp::Update { filter, update, upsert, .. } => {
            let mut d = RawDocumentBuf::new();
            d.append("q", raw(filter)?);
            d.append("u", raw(update)?);
            d.append("upsert", *upsert);
            d.append("multi", false);
            d
        }
        WriteOp::Delete { filter, .. } | WriteOp::DeleteMany { filter, .. } => {
            let mut d = RawDocumentBuf::new();
            d.append("q", raw(filter)?);
            d.append("limit", i32::from(matches!(op, WriteOp::Delete { .. })));
            d
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn runs_of_one_kind_on_one_collection_become_one_command_each_encoded_as_before() {
        let ins = |id: &str| WriteOp::Insert { coll: "users".into(), doc: doc! { "_id": id, "n": 1 } };
        let ops = vec![
            ins("a"),
            ins("b"),
            WriteOp::Update {
                coll: "users".into(),
                filter: doc! { "_id": "a" },
                update: doc! { "$set": { "n": 2 } },
                upsert: true,
            },
            WriteOp::Delete { coll: "users".into(), filter: doc! { "_id": "b" } },
            WriteOp::DeleteMany { coll: "users".into(), filter: doc! { "_id": { "$in": ["c"] } } },
            WriteOp::Delete { coll: "datasets".into(), filter: doc! { "_id": "d" } },
        ];
        let mut commands = Vec::new();
        let mut start = 0;
        while start < ops.len() {
            let (cmd, end) = command_from(&ops, start).unwrap();
            commands.push(cmd.to_document().unwrap());
            start = end;
        }
        let expected = vec![
            doc! { "insert": "users", "documents": [{ "_id": "a", "n": 1 }, { "_id": "b", "n": 1 }], "ordered": false },
            doc! { "update": "users", "updates": [{ "q": { "_id": "a" }, "u": { "$set": { "n": 2 } }, "upsert": true, "multi": false }], "ordered": false },
            doc! { "delete": "users", "deletes": [{ "q": { "_id": "b" }, "limit": 1 }, { "q": { "_id": { "$in": ["c"] } }, "limit": 0 }], "ordered": false },
            doc! { "delete": "datasets", "deletes": [{ "q": { "_id": "d" }, "limit": 1 }], "ordered": false },
        ];
        assert_eq!(commands, expected);
    }

    #[test]
    fn a_command_stops_once_its_list_passes_twelve_mib() {
        let big = "x".repeat(1024 * 1024);
        let ops: Vec<WriteOp> =
            (0..14).map(|i| WriteOp::Insert { coll: "users".into(), doc: doc! { "_id": i, "s": &big } }).collect();
        let (first, end) = command_from(&ops, 0).unwrap();
        assert_eq!(end, 12, "twelve documents of a little over 1 MiB reach the limit");
        assert!(first.as_bytes().len() < 16 * 1024 * 1024);
        assert_eq!(command_from(&ops, end).unwrap().1, 14);
    }

    #[test]
    fn a_document_bson_cannot_encode_refuses_its_command() {
        let ops = vec![WriteOp::Insert { coll: "users".into(), doc: doc! { "_id": "a", "bad\u{0}key": 1 } }];
        assert!(command_from(&ops, 0).is_err());
    }
}
