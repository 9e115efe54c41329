//! The two write paths: `Client::bulk_write` (MongoDB 8.0+) and the
//! `insert`/`update`/`delete` commands every server understands, with their
//! replies turned into one [`Outcome`] per operation.

use bson::{doc, Bson, Document};
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
        const MAX_COMMAND_BYTES: usize = 12 * 1024 * 1024;
        let mut results = Vec::with_capacity(ops.len());
        let mut start = 0;
        while start < ops.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < ops.len()
                && ops[end].kind() == ops[start].kind()
                && ops[end].coll() == ops[start].coll()
                && (end == start || bytes < MAX_COMMAND_BYTES)
            {
                bytes += op_size(&ops[end]);
                end += 1;
            }
            let group = &ops[start..end];
            let cmd = command_for(group);
            let reply = self
                .retry("write command", || {
                    let db = self.db.clone();
                    let cmd = cmd.clone();
                    async move {
                        let reply = db.run_command(cmd).await?;
                        match super::failover_in(&reply) {
                            Some(transient) => Err(transient),
                            None => Ok(reply),
                        }
                    }
                })
                .await?;
            results.extend(self.command_results(group, &reply)?);
            start = end;
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

fn op_size(op: &WriteOp) -> usize {
    let d = match op {
        WriteOp::Insert { doc, .. } => doc,
        WriteOp::Update { update, .. } => update,
        WriteOp::Delete { filter, .. } | WriteOp::DeleteMany { filter, .. } => filter,
    };
    bson::to_vec(d).map(|v| v.len()).unwrap_or(1024) + 64
}

fn command_for(group: &[WriteOp]) -> Document {
    let coll = group.first().map(WriteOp::coll).unwrap_or_default().to_string();
    match group.first() {
        Some(WriteOp::Insert { .. }) => doc! {
            "insert": coll,
            "documents": group.iter().filter_map(|op| match op { WriteOp::Insert { doc, .. } => Some(Bson::Document(doc.clone())), _ => None }).collect::<Vec<_>>(),
            "ordered": false,
        },
        Some(WriteOp::Update { .. }) => doc! {
            "update": coll,
            "updates": group.iter().filter_map(|op| match op {
                WriteOp::Update { filter, update, upsert, .. } => Some(Bson::Document(doc! { "q": filter.clone(), "u": update.clone(), "upsert": *upsert, "multi": false })),
                _ => None,
            }).collect::<Vec<_>>(),
            "ordered": false,
        },
        _ => doc! {
            "delete": coll,
            "deletes": group.iter().filter_map(|op| match op {
                WriteOp::Delete { filter, .. } => Some(Bson::Document(doc! { "q": filter.clone(), "limit": 1 })),
                WriteOp::DeleteMany { filter, .. } => Some(Bson::Document(doc! { "q": filter.clone(), "limit": 0 })),
                _ => None,
            }).collect::<Vec<_>>(),
            "ordered": false,
        },
    }
}
