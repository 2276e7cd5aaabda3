//! A TTL cache for lookups and lists with single-flight loading: concurrent misses
//! for one key run one load and share its result (value or error).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{CacheStats, Counters, Shelf};
use crate::error::StoreError;

type Outcome<V> = Option<Result<(V, Instant), StoreError>>;

struct Slot<V> {
    rx: watch::Receiver<Outcome<V>>,
}

/// Keys are strings such as `user:<id>:calls:…`, so "everything about a user" is a prefix.
pub struct QueryCache<V> {
    shelf: Shelf<String, Arc<Slot<V>>>,
    ttl: Duration,
}

/// Publishes an error to waiters if the loading caller is dropped mid-load.
struct LoadGuard<'a, V: Clone> {
    cache: &'a QueryCache<V>,
    key: &'a str,
    tx: watch::Sender<Outcome<V>>,
    slot: Arc<Slot<V>>,
    done: bool,
}

impl<V: Clone> Drop for LoadGuard<'_, V> {
    fn drop(&mut self) {
        self.cache.shelf.counters.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if !self.done {
            let _ = self.tx.send(Some(Err(cancelled(self.key))));
            self.cache.remove_if_same(self.key, &self.slot);
        }
    }
}

impl<V: Clone> QueryCache<V> {
    /// At most `capacity` keys, each fresh for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self { shelf: Shelf::new(capacity), ttl }
    }

    fn remove_if_same(&self, key: &str, slot: &Arc<Slot<V>>) {
        let mut map = self.shelf.lock();
        if map.peek(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            map.pop(key);
        }
    }

    /// The cached value for `key`, or the result of `load` (run once however many callers miss together).
    /// A failed load is not cached; its error (cause included) goes to every waiter.
    pub async fn get_or_load<F, Fut>(&self, key: &str, load: F) -> Result<V, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, StoreError>>,
    {
        enum Plan<V> {
            Wait(watch::Receiver<Outcome<V>>),
            Load(watch::Sender<Outcome<V>>, Arc<Slot<V>>),
        }
        let plan = {
            let mut map = self.shelf.lock();
            let existing = map.get(key).map(|slot| (slot.clone(), slot.rx.borrow().clone()));
            match existing {
                Some((_, Some(Ok((v, at))))) if at.elapsed() < self.ttl => {
                    Counters::bump(&self.shelf.counters.hits, 1);
                    return Ok(v);
                }
                Some((slot, None)) => Plan::Wait(slot.rx.clone()),
                stale => {
                    if matches!(stale, Some((_, Some(Ok(_))))) {
                        Counters::bump(&self.shelf.counters.expirations, 1);
                    }
                    let (tx, rx) = watch::channel(None);
                    let slot = Arc::new(Slot { rx });
                    self.shelf.put(&mut map, key.to_owned(), slot.clone());
                    Plan::Load(tx, slot)
                }
            }
        };
        Counters::bump(&self.shelf.counters.misses, 1);
        match plan {
            Plan::Wait(mut rx) => match rx.wait_for(Option::is_some).await {
                Ok(outcome) => match outcome.clone() {
                    Some(Ok((v, _))) => Ok(v),
                    Some(Err(e)) => Err(e),
                    None => Err(cancelled(key)),
                },
                // The loader always publishes (its guard does on drop), so the channel
                // cannot close empty; answer as if cancelled rather than panic if it does.
                Err(_) => Err(cancelled(key)),
            },
            Plan::Load(tx, slot) => {
                Counters::bump(&self.shelf.counters.in_flight, 1);
                Counters::bump(&self.shelf.counters.loads, 1);
                let mut guard = LoadGuard { cache: self, key, tx, slot, done: false };
                let result = load().await;
                guard.done = true;
                match result {
                    Ok(v) => {
                        let _ = guard.tx.send(Some(Ok((v.clone(), Instant::now()))));
                        Ok(v)
                    }
                    Err(e) => {
                        let _ = guard.tx.send(Some(Err(e.clone())));
                        self.remove_if_same(key, &guard.slot);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Drops one key.
    pub fn invalidate(&self, key: &str) -> bool {
        self.shelf.drop_key(&key.to_owned())
    }

    /// Drops every key starting with `prefix` (e.g. `user:42:`); returns how many.
    pub fn invalidate_prefix(&self, prefix: &str) -> usize {
        self.shelf.drop_where(|k, _| k.starts_with(prefix))
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.shelf.clear();
    }

    /// Changes the capacity (memory pressure shrinks it).
    pub fn resize(&self, capacity: usize) {
        self.shelf.resize(capacity);
    }

    /// Current figures.
    pub fn stats(&self) -> CacheStats {
        self.shelf.stats()
    }
}

fn cancelled(key: &str) -> StoreError {
    StoreError::LoadCancelled { key: key.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn single_flight_runs_one_load_for_many_callers() {
        let cache = Arc::new(QueryCache::<u32>::new(10, Duration::from_secs(60)));
        let loads = Arc::new(AtomicU32::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let (cache, loads, gate) = (cache.clone(), loads.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load("k", || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Ok(7)
                    })
                    .await
            }));
        }
        // Let every caller reach the cache before the one load completes.
        while cache.stats().misses < 1000 {
            tokio::task::yield_now().await;
        }
        assert_eq!(cache.stats().loads_in_flight, 1);
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 7);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        let s = cache.stats();
        assert_eq!((s.loads, s.misses, s.loads_in_flight), (1, 1000, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_the_ttl() {
        let cache = QueryCache::<u32>::new(10, Duration::from_secs(60));
        assert_eq!(cache.get_or_load("k", || async { Ok(1) }).await.unwrap(), 1);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(cache.get_or_load("k", || async { Ok(2) }).await.unwrap(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get_or_load("k", || async { Ok(3) }).await.unwrap(), 3);
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.expirations, s.loads), (1, 2, 1, 2));
    }

    #[tokio::test]
    async fn errors_are_shared_and_not_cached() {
        let cache = QueryCache::<u32>::new(10, Duration::from_secs(60));
        let err = cache.get_or_load("k", || async { Err(StoreError::NotFound("user")) }).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("user")));
        assert_eq!(cache.get_or_load("k", || async { Ok(5) }).await.unwrap(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_get_the_loaders_own_error() {
        let cache = Arc::new(QueryCache::<u32>::new(10, Duration::from_secs(60)));
        let gate = Arc::new(tokio::sync::Notify::new());
        let (c, g) = (cache.clone(), gate.clone());
        let loader = tokio::spawn(async move {
            c.get_or_load("k", || async move {
                g.notified().await;
                Err(StoreError::from(sqlx::Error::PoolTimedOut))
            })
            .await
        });
        while cache.stats().loads_in_flight == 0 {
            tokio::task::yield_now().await;
        }
        let c = cache.clone();
        let waiter = tokio::spawn(async move { c.get_or_load("k", || async { Ok(1) }).await });
        while cache.stats().misses < 2 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        let (StoreError::Unavailable(mine), StoreError::Unavailable(theirs)) =
            (loader.await.unwrap().unwrap_err(), waiter.await.unwrap().unwrap_err())
        else {
            panic!("both callers must see the database as unavailable");
        };
        assert!(Arc::ptr_eq(&mine, &theirs), "the waiter gets the same sqlx error, not a copy of its text");
        assert_eq!(cache.stats().loads, 1);
    }

    #[tokio::test]
    async fn prefix_invalidation_drops_only_matching_keys() {
        let cache = QueryCache::<u32>::new(10, Duration::from_secs(60));
        for k in ["user:1:calls", "user:1:blocks", "user:12:calls"] {
            cache.get_or_load(k, || async { Ok(1) }).await.unwrap();
        }
        assert_eq!(cache.invalidate_prefix("user:1:"), 2);
        assert_eq!(cache.stats().size, 1);
    }

    #[tokio::test]
    async fn a_cancelled_loader_releases_its_waiters() {
        let cache = Arc::new(QueryCache::<u32>::new(10, Duration::from_secs(60)));
        let c2 = cache.clone();
        let loader = tokio::spawn(async move { c2.get_or_load("k", std::future::pending).await });
        while cache.stats().loads_in_flight == 0 {
            tokio::task::yield_now().await;
        }
        let c3 = cache.clone();
        let waiter = tokio::spawn(async move { c3.get_or_load("k", || async { Ok(9) }).await });
        while cache.stats().misses < 2 {
            tokio::task::yield_now().await;
        }
        loader.abort();
        assert!(matches!(waiter.await.unwrap(), Err(StoreError::LoadCancelled { key }) if key == "k"));
        assert_eq!(cache.get_or_load("k", || async { Ok(9) }).await.unwrap(), 9);
    }
}
