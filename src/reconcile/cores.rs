//! CPU-heavy work (bcrypt hashes and checks, 50-100 ms each at cost 10)
//! spread over every core, on the blocking pool: the async workers never
//! run it, and a thousand plaintext passwords take a thousand hashes divided
//! by the cores, not one after the other.

use tokio_util::sync::CancellationToken;

use crate::error::Fatal;

/// Run `f` on every item, the items split into one slice per core, on the
/// blocking pool; the items come back in their order. When `stop` fires,
/// the items not started yet are left and the answer is `Interrupted`: a
/// SIGTERM does not wait for a thousand bcrypt hashes.
pub async fn on_all_cores<T, F>(
    what: &'static str,
    mut items: Vec<T>,
    stop: &CancellationToken,
    f: F,
) -> Result<Vec<T>, Fatal>
where
    T: Send + 'static,
    F: Fn(&mut T) + Send + Sync + 'static,
{
    if items.is_empty() {
        return Ok(items);
    }
    let stop = stop.clone();
    let (items, stopped) = tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let chunk = items.len().div_ceil(threads).max(1);
        let (f, stop) = (&f, &stop);
        std::thread::scope(|s| {
            for part in items.chunks_mut(chunk) {
                s.spawn(move || {
                    for item in part {
                        if stop.is_cancelled() {
                            return;
                        }
                        f(item);
                    }
                });
            }
        });
        let stopped = stop.is_cancelled();
        (items, stopped)
    })
    .await
    .map_err(Fatal::task(what))?;
    if stopped {
        return Err(Fatal::Interrupted);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn every_item_is_done_once_and_order_is_kept() {
        let items: Vec<(u32, u32)> = (0..1001).map(|i| (i, 0)).collect();
        let go = CancellationToken::new();
        let done = on_all_cores("test", items, &go, |(i, out)| *out = *i * 2).await.unwrap();
        assert!(done.iter().enumerate().all(|(k, (i, out))| u32::try_from(k).ok() == Some(*i) && *out == i * 2));
        assert!(on_all_cores("test", Vec::<u8>::new(), &go, |_| {}).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stop_leaves_the_rest_undone() {
        let stop = CancellationToken::new();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let r = on_all_cores("test", vec![(); 1000], &stop, move |()| {
            if d.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 10 {
                s.cancel();
            }
        })
        .await;
        assert!(matches!(r, Err(Fatal::Interrupted)));
        assert!(done.load(std::sync::atomic::Ordering::SeqCst) < 1000, "the rest was left");
    }
}
