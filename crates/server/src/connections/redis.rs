//! The connection registry in Redis (one server or a cluster).
//!
//! - `{prefix}conns:{user}`: a hash of `instance|conn` → `stamp:expires_ms`, where `stamp`
//!   is Redis's clock in microseconds when the connection was first recorded (so
//!   instances' clocks never decide who is oldest) and `expires_ms` is when the entry
//!   stops counting unless renewed. One key per user, so one script sees all of a user's
//!   connections on any cluster.
//! - `{prefix}conn-index:{instance}`: a sorted set of the users an instance recorded
//!   (score: when, in its clock), only so `forget_instance` knows where to look. It may
//!   name users with nothing left; entries older than twice the TTL are pruned.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::{ClientLike, Value};
use fred::types::{ClusterHash, CustomCommand};

use super::{ConnectionRegistry, Recorded, RegistryError, RegistryResult, parse_member};

/// Upserts the given members, drops expired entries, evicts the oldest over the cap.
/// KEYS[1] user hash; ARGV: ttl_ms, cap, then member, stamp ('' = now) pairs.
/// Returns {evicted members, stamp of each given member...}.
const RECORD: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fresh = t[1] .. string.format('%06d', tonumber(t[2]))
local ttl = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local out = {{}}
for i = 3, #ARGV, 2 do
  local stamp = ARGV[i + 1]
  if stamp == '' then stamp = fresh end
  redis.call('HSET', KEYS[1], ARGV[i], stamp .. ':' .. string.format('%d', now + ttl))
  table.insert(out, stamp)
end
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local s, e = string.match(all[i + 1], '^(%d+):(%d+)$')
  if s == nil or tonumber(e) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(live, {all[i], tonumber(s)})
  end
end
table.sort(live, function(a, b) if a[2] ~= b[2] then return a[2] < b[2] end return a[1] < b[1] end)
for i = 1, #live - cap do
  redis.call('HDEL', KEYS[1], live[i][1])
  table.insert(out[1], live[i][1])
end
if #live > #out[1] then redis.call('PEXPIRE', KEYS[1], ttl) end
return out
"#;

/// The live members of KEYS[1], oldest first.
const MEMBERS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local s, e = string.match(all[i + 1], '^(%d+):(%d+)$')
  if s ~= nil and tonumber(e) > now then table.insert(live, {all[i], tonumber(s)}) end
end
table.sort(live, function(a, b) if a[2] ~= b[2] then return a[2] < b[2] end return a[1] < b[1] end)
local out = {}
for i = 1, #live do out[i] = live[i][1] end
return out
"#;

/// Removes the members of KEYS[1] starting with ARGV[1]; returns how many.
const FORGET: &str = r#"
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #ARGV[1]) == ARGV[1] then
    redis.call('HDEL', KEYS[1], f)
    n = n + 1
  end
end
return n
"#;

/// The registry on a Redis server or cluster, through its own fred client.
pub struct RedisConnections {
    client: fred::prelude::Client,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for RedisConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnections").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn unavailable(e: fred::error::Error) -> RegistryError {
    RegistryError(Box::new(e))
}

fn malformed(what: &str, v: &Value) -> RegistryError {
    RegistryError(format!("unexpected reply to {what}: {v:?}").into())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl RedisConnections {
    /// A registry on an initialized client; keys start with `prefix`, entries count for
    /// `ttl` unless renewed.
    pub fn new(client: fred::prelude::Client, prefix: &str, ttl: Duration) -> Self {
        Self { client, prefix: prefix.to_owned(), ttl }
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}conns:{user}", self.prefix)
    }

    fn index_key(&self, instance: &str) -> String {
        format!("{}conn-index:{instance}", self.prefix)
    }

    async fn eval(&self, script: &str, key: String, args: Vec<Value>) -> Result<Value, RegistryError> {
        let mut all: Vec<Value> = vec![script.into(), 1.into(), key.into()];
        all.extend(args);
        // Routed by the key (argument 2), not by the script text.
        let eval = CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false);
        self.client.custom(eval, all).await.map_err(unavailable)
    }

    async fn command(&self, cmd: &'static str, args: Vec<Value>) -> Result<Value, RegistryError> {
        self.client.custom(CustomCommand::new_static(cmd, ClusterHash::FirstKey, false), args).await.map_err(unavailable)
    }

    async fn index(&self, user: &str, instance: &str) -> Result<(), RegistryError> {
        let (key, now) = (self.index_key(instance), now_ms());
        let stale = now - 2 * self.ttl.as_millis() as i64;
        self.command("ZADD", vec![key.clone().into(), now.into(), user.into()]).await?;
        self.command("ZREMRANGEBYSCORE", vec![key.into(), "-inf".into(), format!("({stale}").into()]).await?;
        Ok(())
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_string()
}

impl ConnectionRegistry for RedisConnections {
    fn record<'a>(&'a self, user: &'a str, conns: Vec<(String, Option<u64>)>, cap: usize) -> RegistryResult<'a, Recorded> {
        Box::pin(async move {
            let mut instances: Vec<&str> = conns.iter().filter_map(|(m, _)| parse_member(m).map(|p| p.0)).collect();
            instances.dedup();
            // Indexed first, so the index always covers what the hash holds.
            for instance in instances {
                self.index(user, instance).await?;
            }
            let count = conns.len();
            let mut args: Vec<Value> = vec![(self.ttl.as_millis() as i64).into(), (cap as i64).into()];
            for (member, stamp) in conns {
                args.push(member.into());
                args.push(stamp.map(|s| s.to_string()).unwrap_or_default().into());
            }
            let reply = self.eval(RECORD, self.user_key(user), args).await?;
            let Value::Array(mut parts) = reply.clone() else { return Err(malformed("RECORD", &reply)) };
            if parts.len() != count + 1 {
                return Err(malformed("RECORD", &reply));
            }
            let evict = match parts.remove(0) {
                Value::Array(items) => items.iter().filter_map(text).collect(),
                Value::Null => Vec::new(),
                other => return Err(malformed("RECORD", &other)),
            };
            let stamps = parts
                .iter()
                .map(|s| text(s).and_then(|s| s.parse().ok()).ok_or_else(|| malformed("RECORD", &reply)))
                .collect::<Result<_, _>>()?;
            Ok(Recorded { stamps, evict })
        })
    }

    fn remove<'a>(&'a self, user: &'a str, member: &'a str) -> RegistryResult<'a, ()> {
        Box::pin(async move {
            self.command("HDEL", vec![self.user_key(user).into(), member.into()]).await?;
            Ok(())
        })
    }

    fn members<'a>(&'a self, user: &'a str) -> RegistryResult<'a, Vec<String>> {
        Box::pin(async move {
            match self.eval(MEMBERS, self.user_key(user), vec![]).await? {
                Value::Array(items) => Ok(items.iter().filter_map(text).collect()),
                Value::Null => Ok(Vec::new()),
                other => Err(malformed("MEMBERS", &other)),
            }
        })
    }

    fn forget_instance<'a>(&'a self, instance: &'a str) -> RegistryResult<'a, usize> {
        Box::pin(async move {
            let index = self.index_key(instance);
            let users = match self.command("ZRANGE", vec![index.clone().into(), 0.into(), (-1).into()]).await? {
                Value::Array(items) => items.iter().filter_map(text).collect::<Vec<_>>(),
                Value::Null => Vec::new(),
                other => return Err(malformed("ZRANGE", &other)),
            };
            let mut removed = 0;
            for user in users {
                let n = self.eval(FORGET, self.user_key(&user), vec![format!("{instance}|").into()]).await?;
                removed += n.as_i64().unwrap_or(0) as usize;
            }
            self.command("DEL", vec![index.into()]).await?;
            Ok(removed)
        })
    }
}
