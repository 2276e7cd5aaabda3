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

/// `INSTANCE_OF` for many users: `''` where a user is bound nowhere or to a dead instance.
static INSTANCES_OF: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local base, alive, out = ARGV[1], {}, {}
local insts = redis.call('HMGET', KEYS[1], unpack(ARGV, 2))
for i, inst in ipairs(insts) do
  out[i] = ''
  if inst then
    if alive[inst] == nil then alive[inst] = redis.call('EXISTS', base .. 'alive:' .. inst) == 1 end
    if alive[inst] then out[i] = inst end
  end
end
return out",
    )
});

/// Users per `INSTANCES_OF` call: well under Lua's limit on `unpack`ed arguments.
const LOOKUP_CHUNK: usize = 1_000;

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

    fn instances_of<'a>(&'a self, users: &'a [String]) -> Res<'a, Vec<Option<Arc<str>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(users.len());
            for chunk in users.chunks(LOOKUP_CHUNK) {
                let keys = vec![self.state.keys().key("loc")];
                let mut args = Vec::with_capacity(chunk.len() + 1);
                args.push(self.state.keys().base.clone());
                args.extend(chunk.iter().cloned());
                let found: Vec<String> = self.state.run(&INSTANCES_OF, keys, args).await?;
                // Instances are few: share one `Arc` per name within the answer.
                let mut names: Vec<Arc<str>> = Vec::new();
                for inst in found {
                    out.push((!inst.is_empty()).then(|| match names.iter().find(|n| ***n == *inst) {
                        Some(n) => n.clone(),
                        None => {
                            let n: Arc<str> = Arc::from(inst);
                            names.push(n.clone());
                            n
                        }
                    }));
                }
            }
            Ok(out)
        })
    }
}
