//! `mirror_state` on PostgreSQL: the same document the MongoDB sink keeps,
//! stored as extended JSON in one `jsonb` row, so `status`, `cutover` and
//! watch's heartbeat work the same on both targets.

use bson::{Bson, Document};
use serde_json::Value;

use super::Pg;
use crate::error::Fatal;
use crate::reconcile::Engine;
use crate::state::StateStore;

const ID: &str = "docmirror";

/// `$set` semantics: a dotted name reaches into (and makes) sub-documents.
fn set_path(doc: &mut Document, path: &str, value: Bson) {
    match path.split_once('.') {
        None => {
            doc.insert(path, value);
        }
        Some((head, rest)) => {
            if !matches!(doc.get(head), Some(Bson::Document(_))) {
                doc.insert(head, Document::new());
            }
            if let Some(Bson::Document(inner)) = doc.get_mut(head) {
                set_path(inner, rest, value);
            }
        }
    }
}

fn from_json(v: Value) -> Option<Document> {
    match Bson::try_from(v).ok()? {
        Bson::Document(d) => Some(d),
        _ => None,
    }
}

impl StateStore for Pg {
    async fn set_state(&self, fields: Document) -> Result<(), Fatal> {
        // One writer at a time in this process: read, change, write back.
        let _one = self.state_lock().lock().await;
        let mut state = self.read_state().await?.unwrap_or_default();
        for (k, v) in fields {
            set_path(&mut state, &k, v);
        }
        let json = Bson::Document(state).into_relaxed_extjson();
        self.client().await?
            .execute(
                "INSERT INTO mirror_state (id, state) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state",
                &[&ID, &json],
            )
            .await
            .map_err(|e| self.fatal("cannot write mirror_state", &e))?;
        Ok(())
    }

    async fn read_state(&self) -> Result<Option<Document>, Fatal> {
        match self.client().await?.query_opt("SELECT state FROM mirror_state WHERE id = $1", &[&ID]).await {
            Ok(row) => Ok(row.and_then(|r| r.try_get::<_, Value>(0).ok()).and_then(from_json)),
            // No docmirror table here yet: docmirror never ran against this database.
            Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => Ok(None),
            Err(e) => Err(self.fatal("cannot read mirror_state", &e)),
        }
    }

    async fn count_rejects(&self) -> Result<u64, Fatal> {
        let row = self
            .client()
            .await?
            .query_one("SELECT count(*) FROM mirror_rejects", &[])
            .await
            .map_err(|e| self.fatal("cannot count mirror_rejects", &e))?;
        let n: i64 = row.try_get(0).map_err(|e| self.fatal("cannot count mirror_rejects", &e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn ping(&self) -> bool {
        let ask = async { self.client().await.ok()?.simple_query("SELECT 1").await.ok() };
        let ok = tokio::time::timeout(std::time::Duration::from_secs(5), ask).await.is_ok_and(|r| r.is_some());
        self.metrics().set_mongodb_up(ok);
        ok
    }

    async fn prepare(&self, engine: &Engine) -> Result<(), Fatal> {
        self.apply_schema(&engine.layout).await
    }

    fn place(&self) -> String {
        self.shown_url().to_string()
    }

    fn take_blocked_deletes(&self) -> u64 {
        self.blocked().swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn dotted_names_reach_into_sub_documents() {
        let mut d = doc! { "watch": { "running": true, "pid": 7 } };
        set_path(&mut d, "watch.running", Bson::Boolean(false));
        set_path(&mut d, "last_change.users", Bson::Int32(1));
        assert_eq!(d, doc! { "watch": { "running": false, "pid": 7 }, "last_change": { "users": 1 } });
    }

    #[test]
    fn dates_survive_the_jsonb_round_trip() {
        let at = bson::DateTime::from_millis(1_760_291_110_123);
        let json = Bson::Document(doc! { "at": at, "n": 3_i64, "s": 1.5 }).into_relaxed_extjson();
        let back = from_json(json).unwrap();
        assert_eq!(back.get_datetime("at").unwrap(), &at);
        assert_eq!(back.get_f64("s").unwrap(), 1.5);
    }
}
