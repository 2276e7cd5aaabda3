//! [`Locator`] on Redis: a hash user → instance, plus a set of users per instance so the
//! survivor that cleans up after a dead instance finds its users without a scan. A
//! binding counts only while its instance's liveness key exists, so `instance_of` stops
//! naming a dead instance as soon as its heartbeats stop, before anyone has cleaned up.

use std::sync::{Arc, LazyLock};

use super::{Locator, Res};
use crate::redis::{RedisState, Script};

static BIND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local base, user, inst = ARGV[1], ARGV[2], ARGV[3]
local old = redis.call('HGET', KEYS[1], user)
if old and old ~= inst then redis.call('SREM', base .. 'at:' .. old, user) end
redis.call('HSET', KEYS[1], user, inst)
redis.call('SADD', base .. 'at:' .. inst, user)
return 1",
    )
});

static UNBIND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local base, user, inst = ARGV[1], ARGV[2], ARGV[3]
redis.call('SREM', base .. 'at:' .. inst, user)
if redis.call('HGET', KEYS[1], user) == inst then redis.call('HDEL', KEYS[1], user) end
return 1",
    )
});

static INSTANCE_OF: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local inst = redis.call('HGET', KEYS[1], ARGV[2])
if inst and redis.call('EXISTS', ARGV[1] .. 'alive:' .. inst) == 1 then return inst end
return false",
    )
});

/// The user → instance registry on Redis. Clones share the connection.
#[derive(Clone, Debug)]
pub struct RedisLocator {
    state: RedisState,
}

impl RedisLocator {
    pub(crate) fn new(state: RedisState) -> Self {
        Self { state }
    }

    fn args(&self, user: &str, instance: &str) -> Vec<String> {
        vec![self.state.keys().base.clone(), user.to_owned(), instance.to_owned()]
    }
}

impl Locator for RedisLocator {
    fn bind<'a>(&'a self, user_id: &'a str, instance: &'a str) -> Res<'a, ()> {
        Box::pin(async move {
            let keys = vec![self.state.keys().key("loc")];
            self.state.run::<i64>(&BIND, keys, self.args(user_id, instance)).await.map(drop)
        })
    }

    fn unbind<'a>(&'a self, user_id: &'a str, instance: &'a str) -> Res<'a, ()> {
        Box::pin(async move {
            let keys = vec![self.state.keys().key("loc")];
            self.state.run::<i64>(&UNBIND, keys, self.args(user_id, instance)).await.map(drop)
        })
    }

    fn instance_of<'a>(&'a self, user_id: &'a str) -> Res<'a, Option<Arc<str>>> {
        Box::pin(async move {
            let keys = vec![self.state.keys().key("loc")];
            let args = vec![self.state.keys().base.clone(), user_id.to_owned()];
            let inst: Option<String> = self.state.run(&INSTANCE_OF, keys, args).await?;
            Ok(inst.map(Arc::from))
        })
    }
}
