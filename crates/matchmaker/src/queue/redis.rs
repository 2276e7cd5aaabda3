//! [`MatchQueue`] on Redis: each operation is one Lua script, so it is atomic across
//! every instance (and on Redis Cluster, since all keys share one hash tag; see
//! `crate::redis` for the key layout). The line is a sorted set scored by the join time,
//! so a user re-queued after Redis lost its keys gets back the same place.

use std::sync::{Arc, LazyLock};

use super::{CallRecord, Engagement, JoinOutcome, MatchQueue, PairBan, QueueEntry, QueueError, Res, UserStatus};
use crate::redis::{RedisState, Script, unavailable};

/// Ban keys outlive their end (by this instance's clock) by this much, so clock skew
/// between instances never drops a ban early (the scripts compare `until_ms` with the
/// caller's time; the expiry only reclaims memory).
const BAN_EXPIRY_MARGIN_MS: i64 = 60_000;

static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('HGET', KEYS[3], ARGV[1])
if e then return {'engaged', e} end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {'already'} end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {'queued'}",
    )
});

static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return n",
    )
});

static STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('HGET', KEYS[2], ARGV[1])
if e then return {'engaged', e} end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {'queued'} end
return {'idle'}",
    )
});

static WAITING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local users = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #users == 0 then return {} end
local entries = redis.call('HMGET', KEYS[2], unpack(users))
local out = {}
for i = 1, #users do
  if entries[i] then out[#out + 1] = entries[i] end
end
return out",
    )
});

/// Shared by `claim` (any ban refuses) and `engage_pair` (only a block refuses, and
/// queued or idle users qualify).
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local a, b, now, invite = ARGV[1], ARGV[2], tonumber(ARGV[4]), ARGV[5] == '1'
if a == b then return 0 end
if invite then
  if redis.call('HEXISTS', KEYS[3], a) == 1 or redis.call('HEXISTS', KEYS[3], b) == 1 then return 0 end
else
  if not redis.call('ZSCORE', KEYS[1], a) or not redis.call('ZSCORE', KEYS[1], b) then return 0 end
end
local ban = redis.call('GET', KEYS[4])
if ban then
  local until_ms, blocked = string.match(ban, '^(%-?%d+),(%d)$')
  if tonumber(until_ms) > now and (not invite or blocked == '1') then return 0 end
end
redis.call('ZREM', KEYS[1], a, b)
redis.call('HDEL', KEYS[2], a, b)
redis.call('HSET', KEYS[3], a, ARGV[3], b, ARGV[3])
return 1",
    )
});

static REBIND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('HGET', KEYS[1], ARGV[1])
if not e or cjson.decode(e).id ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1",
    )
});

static REQUEUE_FRONT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('HGET', KEYS[3], ARGV[1])
if not e or cjson.decode(e).id ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
local score = tonumber(ARGV[4])
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then score = math.min(tonumber(first[2]) - 1, score) end
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1",
    )
});

static BAN_PAIR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local until_ms, blocked = tonumber(ARGV[1]), ARGV[2]
local old = redis.call('GET', KEYS[1])
if old then
  local u, b = string.match(old, '^(%-?%d+),(%d)$')
  if tonumber(u) > until_ms then until_ms = tonumber(u) end
  if b == '1' then blocked = '1' end
end
local ttl = math.max(until_ms - tonumber(ARGV[3]), 0) + tonumber(ARGV[4])
redis.call('SET', KEYS[1], string.format('%d,%s', until_ms, blocked), 'PX', ttl)
return 1",
    )
});

static GET: LazyLock<Script> = LazyLock::new(|| Script::new("return redis.call('GET', KEYS[1])"));

static LEN: LazyLock<Script> = LazyLock::new(|| Script::new("return redis.call('ZCARD', KEYS[1])"));

static RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 1",
    )
});

static HSET: LazyLock<Script> = LazyLock::new(|| Script::new("return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])"));

static HDEL: LazyLock<Script> = LazyLock::new(|| Script::new("return redis.call('HDEL', KEYS[1], ARGV[1])"));

/// The queue and engagement table on Redis. Clones share the connection.
#[derive(Clone, Debug)]
pub struct RedisQueue {
    state: RedisState,
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, QueueError> {
    serde_json::to_string(v).map_err(unavailable)
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, QueueError> {
    serde_json::from_str(s).map_err(unavailable)
}

/// `"<until_ms>,<0|1>"`.
fn parse_ban(s: &str) -> Option<PairBan> {
    let (until, blocked) = s.split_once(',')?;
    Some(PairBan { until_ms: until.parse().ok()?, blocked: blocked == "1" })
}

impl RedisQueue {
    pub(crate) fn new(state: RedisState) -> Self {
        Self { state }
    }

    fn k(&self, name: &str) -> String {
        self.state.keys().key(name)
    }

    /// Queue, entries, engaged.
    fn table(&self) -> Vec<String> {
        vec![self.k("queue"), self.k("entries"), self.k("engaged")]
    }

    async fn flag(&self, script: &Script, keys: Vec<String>, args: Vec<String>) -> Result<bool, QueueError> {
        Ok(self.state.run::<i64>(script, keys, args).await? == 1)
    }

    async fn pair_op(
        &self,
        a: &str,
        b: &str,
        engagement: &Engagement,
        now_ms: i64,
        invite: bool,
    ) -> Result<bool, QueueError> {
        let mut keys = self.table();
        keys.push(self.state.keys().ban(a, b));
        let args =
            vec![a.into(), b.into(), json(engagement)?, now_ms.to_string(), if invite { "1" } else { "0" }.into()];
        self.flag(&CLAIM, keys, args).await
    }
}

/// `{'engaged', json}` / `{'queued'}` / `{'idle'}` / `{'already'}`.
fn status_reply(reply: &[String]) -> Result<Result<UserStatus, bool>, QueueError> {
    Ok(match reply {
        [tag, e] if tag == "engaged" => Ok(UserStatus::Engaged(parse(e)?)),
        [tag] if tag == "queued" => Ok(UserStatus::Queued),
        [tag] if tag == "idle" => Ok(UserStatus::Idle),
        _ => Err(true),
    })
}

impl MatchQueue for RedisQueue {
    fn enqueue(&self, entry: QueueEntry) -> Res<'_, JoinOutcome> {
        Box::pin(async move {
            let args = vec![entry.user_id().to_owned(), json(&entry)?, entry.joined_at_ms.to_string()];
            let reply: Vec<String> = self.state.run(&ENQUEUE, self.table(), args).await?;
            Ok(match reply.as_slice() {
                [tag, e] if tag == "engaged" => JoinOutcome::Engaged(parse(e)?),
                [tag] if tag == "already" => JoinOutcome::AlreadyQueued,
                _ => JoinOutcome::Queued,
            })
        })
    }

    fn leave<'a>(&'a self, user_id: &'a str) -> Res<'a, bool> {
        Box::pin(
            async move { self.flag(&LEAVE, vec![self.k("queue"), self.k("entries")], vec![user_id.to_owned()]).await },
        )
    }

    fn status<'a>(&'a self, user_id: &'a str) -> Res<'a, UserStatus> {
        Box::pin(async move {
            let reply: Vec<String> =
                self.state.run(&STATUS, vec![self.k("queue"), self.k("engaged")], vec![user_id.to_owned()]).await?;
            match status_reply(&reply)? {
                Ok(s) => Ok(s),
                Err(_) => Err(unavailable(std::io::Error::other(format!("unexpected status reply {reply:?}")))),
            }
        })
    }

    fn waiting(&self, limit: usize) -> Res<'_, Vec<Arc<QueueEntry>>> {
        Box::pin(async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let keys = vec![self.k("queue"), self.k("entries")];
            let reply: Vec<String> = self.state.run(&WAITING, keys, vec![limit.to_string()]).await?;
            reply.iter().map(|e| parse::<QueueEntry>(e).map(Arc::new)).collect()
        })
    }

    fn claim<'a>(&'a self, a: &'a str, b: &'a str, engagement: Engagement, now_ms: i64) -> Res<'a, bool> {
        Box::pin(async move { self.pair_op(a, b, &engagement, now_ms, false).await })
    }

    fn engage_pair<'a>(&'a self, a: &'a str, b: &'a str, engagement: Engagement, now_ms: i64) -> Res<'a, bool> {
        Box::pin(async move { self.pair_op(a, b, &engagement, now_ms, true).await })
    }

    fn rebind<'a>(&'a self, user_id: &'a str, from_id: &'a str, to: Engagement) -> Res<'a, bool> {
        Box::pin(async move {
            let args = vec![user_id.to_owned(), from_id.to_owned(), json(&to)?];
            self.flag(&REBIND, vec![self.k("engaged")], args).await
        })
    }

    fn release<'a>(&'a self, user_id: &'a str, id: &'a str) -> Res<'a, bool> {
        Box::pin(async move {
            // REBIND with an empty target deletes.
            let args = vec![user_id.to_owned(), id.to_owned(), String::new()];
            self.flag(&REBIND, vec![self.k("engaged")], args).await
        })
    }

    fn requeue_front<'a>(&'a self, entry: Arc<QueueEntry>, id: &'a str) -> Res<'a, bool> {
        Box::pin(async move {
            let args = vec![entry.user_id().to_owned(), id.to_owned(), json(&*entry)?, entry.joined_at_ms.to_string()];
            self.flag(&REQUEUE_FRONT, self.table(), args).await
        })
    }

    fn ban_pair<'a>(&'a self, a: &'a str, b: &'a str, ban: PairBan) -> Res<'a, ()> {
        Box::pin(async move {
            let args = vec![
                ban.until_ms.to_string(),
                if ban.blocked { "1" } else { "0" }.into(),
                crate::clock::now_ms().to_string(),
                BAN_EXPIRY_MARGIN_MS.to_string(),
            ];
            self.state.run::<i64>(&BAN_PAIR, vec![self.state.keys().ban(a, b)], args).await.map(drop)
        })
    }

    fn pair_ban<'a>(&'a self, a: &'a str, b: &'a str, now_ms: i64) -> Res<'a, Option<PairBan>> {
        Box::pin(async move {
            let raw: Option<String> = self.state.run(&GET, vec![self.state.keys().ban(a, b)], vec![]).await?;
            Ok(raw.as_deref().and_then(parse_ban).filter(|ban| ban.until_ms > now_ms))
        })
    }

    fn len(&self) -> Res<'_, usize> {
        Box::pin(async move { Ok(self.state.run::<i64>(&LEN, vec![self.k("queue")], vec![]).await?.max(0) as usize) })
    }

    fn is_empty(&self) -> Res<'_, bool> {
        Box::pin(async move { Ok(self.len().await? == 0) })
    }

    fn restore_engagement<'a>(&'a self, user_id: &'a str, engagement: Engagement) -> Res<'a, bool> {
        Box::pin(async move { self.flag(&RESTORE, self.table(), vec![user_id.to_owned(), json(&engagement)?]).await })
    }

    fn record_call<'a>(&'a self, call: &'a CallRecord) -> Res<'a, ()> {
        Box::pin(async move {
            let args = vec![call.call_id.clone(), json(call)?];
            self.state.run::<i64>(&HSET, vec![self.k("calls")], args).await.map(drop)
        })
    }

    fn forget_call<'a>(&'a self, call_id: &'a str) -> Res<'a, ()> {
        Box::pin(async move {
            self.state.run::<i64>(&HDEL, vec![self.k("calls")], vec![call_id.to_owned()]).await.map(drop)
        })
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn reachable(&self) -> bool {
        self.state.is_connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_round_trip_their_text_form() {
        assert_eq!(parse_ban("123,1"), Some(PairBan { until_ms: 123, blocked: true }));
        assert_eq!(parse_ban("-5,0"), Some(PairBan { until_ms: -5, blocked: false }));
        assert_eq!(parse_ban("x"), None);
    }
}
