//! Carts in Redis (the distributed mode): a hash per cart (`l:<sku>` → the line as JSON, plus
//! `updated_at` and, once reported idle, `reported`), a sorted set of carts by last change (for
//! abandoned carts) and a set per SKU of the carts holding it (for repricing). Every change to a
//! cart is one Lua script, so it is atomic, and refreshes the cart's TTL.

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use crate::store::{CartStore, IdleCart, Snapshot, StoredLine};

pub struct RedisCartStore {
    conn: ConnectionManager,
    prefix: String,
    ttl_secs: i64,
    scripts: Scripts,
}

struct Scripts {
    add: Script,
    set_quantity: Script,
    remove: Script,
    deduct: Script,
    take: Script,
    reprice: Script,
    mark_reported: Script,
}

/// Shared by the scripts that write a line: stamps the cart, refreshes its TTL, and indexes it.
/// KEYS: cart hash, updated set, SKU set. ARGV (from 1): …, now, ttl, cart key.
const TOUCH: &str = r"
local function touch(now, ttl, cart_key)
  redis.call('HSET', KEYS[1], 'updated_at', now)
  redis.call('HDEL', KEYS[1], 'reported')
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[2], now, cart_key)
  redis.call('SADD', KEYS[3], cart_key)
end
";

/// ARGV: sku, line JSON, quantity, max (or cap), now, ttl, cart key, mode ('add' or 'merge').
const ADD: &str = r"
local field = 'l:' .. ARGV[1]
local qty = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
local line = cjson.decode(ARGV[2])
local current = redis.call('HGET', KEYS[1], field)
local total = qty
if current then
  local old = cjson.decode(current)
  total = old.quantity + qty
  line.added_price = old.added_price
  line.added_at = old.added_at
end
if ARGV[8] == 'merge' then
  if total > max then total = max end
  if total <= 0 then return {1, 0} end
elseif total > max then
  local have = 0
  if current then have = cjson.decode(current).quantity end
  return {0, have}
end
line.quantity = total
line.updated_at = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], field, cjson.encode(line))
touch(ARGV[5], ARGV[6], ARGV[7])
return {1, total}
";

/// ARGV: sku, quantity, now, ttl, cart key.
const SET_QUANTITY: &str = r"
local field = 'l:' .. ARGV[1]
local current = redis.call('HGET', KEYS[1], field)
if not current then return 0 end
local line = cjson.decode(current)
line.quantity = tonumber(ARGV[2])
line.updated_at = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], field, cjson.encode(line))
touch(ARGV[3], ARGV[4], ARGV[5])
return 1
";

/// KEYS: cart hash, updated set, SKU set. ARGV: sku, now, ttl, cart key.
const REMOVE: &str = r"
if redis.call('HDEL', KEYS[1], 'l:' .. ARGV[1]) == 0 then return 0 end
redis.call('SREM', KEYS[3], ARGV[4])
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'l:' then
    redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
    redis.call('HDEL', KEYS[1], 'reported')
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
    return 1
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[4])
return 1
";

/// KEYS: cart hash, updated set, the order's marker, then the SKU set of each line. ARGV: cart
/// key, the marker's TTL, then a SKU and a quantity per line. Does nothing when the marker exists.
const DEDUCT: &str = r"
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[2]) == false then return -1 end
local n = 1
for i = 3, #ARGV, 2 do
  n = n + 1
  local field = 'l:' .. ARGV[i]
  local current = redis.call('HGET', KEYS[1], field)
  if current then
    local line = cjson.decode(current)
    local left = line.quantity - tonumber(ARGV[i + 1])
    if left <= 0 then
      redis.call('HDEL', KEYS[1], field)
      redis.call('SREM', KEYS[2 + n], ARGV[1])
    else
      line.quantity = left
      redis.call('HSET', KEYS[1], field, cjson.encode(line))
    end
  end
end
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'l:' then return 1 end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 0
";

/// KEYS: cart hash, updated set. ARGV: cart key. Answers the line JSONs.
const TAKE: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local lines = {}
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'l:' then table.insert(lines, all[i + 1]) end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return lines
";

/// KEYS: cart hash. ARGV: sku, snapshot JSON. 0 when the cart no longer holds the SKU.
const REPRICE: &str = r"
local field = 'l:' .. ARGV[1]
local current = redis.call('HGET', KEYS[1], field)
if not current then return 0 end
local line = cjson.decode(current)
local s = cjson.decode(ARGV[2])
local d = s.details
if type(d) == 'table' then
  line.product_id = d.product_id
  line.name = d.name
  line.slug = d.slug
  line.image = d.image
  line.unit_price = d.unit_price
  line.currency = d.currency
end
if s.active then line.active = 1 else line.active = 0 end
redis.call('HSET', KEYS[1], field, cjson.encode(line))
return 1
";

/// KEYS: cart hash, updated set. ARGV: cart key, updated_at.
const MARK_REPORTED: &str = r"
if redis.call('HGET', KEYS[1], 'updated_at') ~= ARGV[2] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'reported') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'reported', '1')
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
";

impl RedisCartStore {
    /// Connects to `url`; every key starts with `prefix` (e.g. `mercato:`).
    pub async fn connect(url: &str, prefix: &str, ttl: std::time::Duration) -> anyhow::Result<Self> {
        let conn = platform::redis_link::connect(url).await?;
        let with_touch = |body: &str| Script::new(&format!("{TOUCH}{body}"));
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            ttl_secs: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1),
            scripts: Scripts {
                add: with_touch(ADD),
                set_quantity: with_touch(SET_QUANTITY),
                remove: Script::new(REMOVE),
                deduct: Script::new(DEDUCT),
                take: Script::new(TAKE),
                reprice: Script::new(REPRICE),
                mark_reported: Script::new(MARK_REPORTED),
            },
        })
    }

    /// The Redis key of a cart's hash.
    pub fn cart_key(&self, cart: &str) -> String {
        format!("{}cart:{cart}", self.prefix)
    }

    fn updated_key(&self) -> String {
        format!("{}carts:updated", self.prefix)
    }

    fn sku_key(&self, sku: &str) -> String {
        format!("{}sku:{sku}", self.prefix)
    }

    fn parse_lines(raw: Vec<String>) -> anyhow::Result<Vec<StoredLine>> {
        let mut lines = raw
            .iter()
            .map(|json| serde_json::from_str::<StoredLine>(json))
            .collect::<Result<Vec<_>, _>>()?;
        lines.sort_by(|a, b| (a.added_at, &a.sku).cmp(&(b.added_at, &b.sku)));
        Ok(lines)
    }

    async fn write_line(
        &self,
        cart: &str,
        line: &StoredLine,
        limit: i64,
        mode: &str,
        now: i64,
    ) -> anyhow::Result<(i64, i64)> {
        let mut fresh = line.clone();
        fresh.updated_at = now;
        let (ok, quantity): (i64, i64) = self
            .scripts
            .add
            .key(self.cart_key(cart))
            .key(self.updated_key())
            .key(self.sku_key(&line.sku))
            .arg(&line.sku)
            .arg(serde_json::to_string(&fresh)?)
            .arg(line.quantity)
            .arg(limit)
            .arg(now)
            .arg(self.ttl_secs)
            .arg(cart)
            .arg(mode)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((ok, quantity))
    }
}

#[async_trait]
impl CartStore for RedisCartStore {
    async fn lines(&self, cart: &str, _now: i64) -> anyhow::Result<Vec<StoredLine>> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.cart_key(cart))
            .query_async(&mut self.conn.clone())
            .await?;
        Self::parse_lines(
            all.into_iter()
                .filter(|(field, _)| field.starts_with("l:"))
                .map(|(_, json)| json)
                .collect(),
        )
    }

    async fn add(&self, cart: &str, line: &StoredLine, max: i64, now: i64) -> anyhow::Result<Result<i64, i64>> {
        let (ok, quantity) = self.write_line(cart, line, max, "add", now).await?;
        Ok(if ok == 1 { Ok(quantity) } else { Err(quantity) })
    }

    async fn set_quantity(&self, cart: &str, sku: &str, quantity: i64, now: i64) -> anyhow::Result<bool> {
        let done: i64 = self
            .scripts
            .set_quantity
            .key(self.cart_key(cart))
            .key(self.updated_key())
            .key(self.sku_key(sku))
            .arg(sku)
            .arg(quantity)
            .arg(now)
            .arg(self.ttl_secs)
            .arg(cart)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(done == 1)
    }

    async fn remove(&self, cart: &str, sku: &str, now: i64) -> anyhow::Result<bool> {
        let done: i64 = self
            .scripts
            .remove
            .key(self.cart_key(cart))
            .key(self.updated_key())
            .key(self.sku_key(sku))
            .arg(sku)
            .arg(now)
            .arg(self.ttl_secs)
            .arg(cart)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(done == 1)
    }

    async fn clear(&self, cart: &str) -> anyhow::Result<()> {
        self.take(cart, 0).await.map(|_| ())
    }

    async fn deduct(&self, cart: &str, order_id: &str, bought: &[(String, i64)], _now: i64) -> anyhow::Result<()> {
        let mut invocation = self.scripts.deduct.key(self.cart_key(cart));
        invocation.key(self.updated_key());
        invocation.key(format!("{}deducted:{order_id}", self.prefix));
        for (sku, _) in bought {
            invocation.key(self.sku_key(sku));
        }
        // The marker outlives any redelivery of the order's event.
        invocation.arg(cart).arg(7 * 24 * 3600);
        for (sku, quantity) in bought {
            invocation.arg(sku).arg(*quantity);
        }
        let _left: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn take(&self, cart: &str, _now: i64) -> anyhow::Result<Vec<StoredLine>> {
        let raw: Vec<String> = self
            .scripts
            .take
            .key(self.cart_key(cart))
            .key(self.updated_key())
            .arg(cart)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Self::parse_lines(raw)
    }

    async fn merge_line(&self, cart: &str, line: &StoredLine, cap: i64, now: i64) -> anyhow::Result<i64> {
        Ok(self.write_line(cart, line, cap, "merge", now).await?.1)
    }

    async fn reprice(&self, sku: &str, snapshot: &Snapshot) -> anyhow::Result<u64> {
        let mut conn = self.conn.clone();
        let carts: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.sku_key(sku))
            .query_async(&mut conn)
            .await?;
        let snapshot = serde_json::to_string(snapshot)?;
        let mut changed = 0;
        for cart in carts {
            let done: i64 = self
                .scripts
                .reprice
                .key(self.cart_key(&cart))
                .arg(sku)
                .arg(&snapshot)
                .invoke_async(&mut conn)
                .await?;
            if done == 1 {
                changed += 1;
            } else {
                // The cart expired or dropped the SKU: forget it for this SKU.
                let _: i64 = redis::cmd("SREM")
                    .arg(self.sku_key(sku))
                    .arg(&cart)
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(changed)
    }

    async fn idle(&self, idle_before: i64, now: i64, limit: usize) -> anyhow::Result<Vec<IdleCart>> {
        let mut conn = self.conn.clone();
        let carts: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.updated_key())
            .arg("-inf")
            .arg(format!("({idle_before}"))
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        let mut idle = Vec::new();
        for cart_key in carts {
            let updated_at: Option<i64> = redis::cmd("HGET")
                .arg(self.cart_key(&cart_key))
                .arg("updated_at")
                .query_async(&mut conn)
                .await?;
            let lines = self.lines(&cart_key, now).await?;
            match updated_at {
                Some(updated_at) if !lines.is_empty() => idle.push(IdleCart {
                    cart_key,
                    updated_at,
                    lines,
                }),
                // Expired (or emptied): drop it from the index.
                _ => {
                    let _: i64 = redis::cmd("ZREM")
                        .arg(self.updated_key())
                        .arg(&cart_key)
                        .query_async(&mut conn)
                        .await?;
                }
            }
        }
        Ok(idle)
    }

    async fn mark_reported(&self, cart: &str, updated_at: i64) -> anyhow::Result<bool> {
        let done: i64 = self
            .scripts
            .mark_reported
            .key(self.cart_key(cart))
            .key(self.updated_key())
            .arg(cart)
            .arg(updated_at)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(done == 1)
    }

    async fn purge_expired(&self, _now: i64) -> anyhow::Result<u64> {
        Ok(0)
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn.clone()).await?;
        Ok(())
    }
}

impl RedisCartStore {
    /// The cart's remaining time to live in seconds (`None` when it does not exist).
    pub async fn ttl(&self, cart: &str) -> anyhow::Result<Option<i64>> {
        let ttl: i64 = redis::cmd("TTL")
            .arg(self.cart_key(cart))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok((ttl >= 0).then_some(ttl))
    }
}
