//! CPU-heavy work (bcrypt hashes and checks, 50-100 ms each at cost 10)
//! spread over every core, on the blocking pool: the async workers never
//! run it, and a thousand plaintext passwords take a thousand hashes divided
//! by the cores, not one after the other.

use crate::error::Fatal;

/// Run `f` on every item, the items split into one slice per core, on the
/// blocking pool; the items come back in their order.
pub async fn on_all_cores<T, F>(what: &'static str, mut items: Vec<T>, f: F) -> Result<Vec<T>, Fatal>
where
    T: Send + 'static,
    F: Fn(&mut T) + Send + Sync + 'static,
{
    if items.is_empty() {
        return Ok(items);
    }
    tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let chunk = items.len().div_ceil(threads).max(1);
        let f = &f;
        std::thread::scope(|s| {
            for part in items.chunks_mut(chunk) {
                s.spawn(move || part.iter_mut().for_each(f));
            }
        });
        items
    })
    .await
    .map_err(Fatal::task(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn every_item_is_done_once_and_order_is_kept() {
        let items: Vec<(u32, u32)> = (0..1001).map(|i| (i, 0)).collect();
        let done = on_all_cores("test", items, |(i, out)| *out = *i * 2).await.unwrap();
        assert!(done.iter().enumerate().all(|(k, (i, out))| u32::try_from(k).ok() == Some(*i) && *out == i * 2));
        assert!(on_all_cores("test", Vec::<u8>::new(), |_| {}).await.unwrap().is_empty());
    }
}
