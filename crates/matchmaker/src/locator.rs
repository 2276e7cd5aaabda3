//! Which instance holds a user's connection, so messages for the user go to that
//! instance's inbox. [`InProcessLocator`] serves one process (and multi-instance tests);
//! [`RedisLocator`] serves a cluster, and never names an instance that stopped heartbeating.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::directory::BoxFuture;
use crate::queue::QueueError;

type Res<'a, T> = BoxFuture<'a, Result<T, QueueError>>;

/// The user → instance registry.
pub trait Locator: Send + Sync + 'static {
    /// `user_id` is now reached through `instance` (the latest connection wins).
    fn bind<'a>(&'a self, user_id: &'a str, instance: &'a str) -> Res<'a, ()>;
    /// `instance` lost its last connection of `user_id`; a newer binding elsewhere stays.
    fn unbind<'a>(&'a self, user_id: &'a str, instance: &'a str) -> Res<'a, ()>;
    /// Where the user is connected, if anywhere.
    fn instance_of<'a>(&'a self, user_id: &'a str) -> Res<'a, Option<Arc<str>>>;
    /// Where each of `users` is connected, in order: one round trip for the lot where the
    /// registry is remote (the sweep asks about every party it coordinates).
    fn instances_of<'a>(&'a self, users: &'a [String]) -> Res<'a, Vec<Option<Arc<str>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(users.len());
            for u in users {
                out.push(self.instance_of(u).await?);
            }
            Ok(out)
        })
    }
}

/// The registry in this process's memory; clones share it.
#[derive(Clone, Default, Debug)]
pub struct InProcessLocator {
    map: Arc<Mutex<HashMap<String, Arc<str>>>>,
}

impl InProcessLocator {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Arc<str>>) -> T) -> T {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut m)
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> Res<'a, T> {
    Box::pin(std::future::ready(Ok(v)))
}

impl Locator for InProcessLocator {
    fn bind<'a>(&'a self, user_id: &'a str, instance: &'a str) -> Res<'a, ()> {
        self.with(|m| m.insert(user_id.to_owned(), Arc::from(instance)));
        ready(())
    }

    fn unbind<'a>(&'a self, user_id: &'a str, instance: &'a str) -> Res<'a, ()> {
        self.with(|m| {
            if m.get(user_id).is_some_and(|i| &**i == instance) {
                m.remove(user_id);
            }
        });
        ready(())
    }

    fn instance_of<'a>(&'a self, user_id: &'a str) -> Res<'a, Option<Arc<str>>> {
        ready(self.with(|m| m.get(user_id).cloned()))
    }
}

mod redis;
pub use redis::RedisLocator;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_at_once_answer_in_order() {
        let l = InProcessLocator::new();
        l.bind("u", "a").await.unwrap();
        l.bind("w", "b").await.unwrap();
        let users = ["w", "nobody", "u"].map(String::from);
        let found = l.instances_of(&users).await.unwrap();
        assert_eq!(found.iter().map(Option::as_deref).collect::<Vec<_>>(), [Some("b"), None, Some("a")]);
    }

    #[tokio::test]
    async fn the_latest_binding_wins_and_stale_unbinds_are_ignored() {
        let l = InProcessLocator::new();
        l.bind("u", "a").await.unwrap();
        l.bind("u", "b").await.unwrap();
        l.unbind("u", "a").await.unwrap();
        assert_eq!(l.instance_of("u").await.unwrap().as_deref(), Some("b"));
        l.unbind("u", "b").await.unwrap();
        assert_eq!(l.instance_of("u").await.unwrap(), None);
    }
}
