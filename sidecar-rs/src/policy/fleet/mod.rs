//! Fleet-wide state in Redis: rate-limit buckets shared by every sidecar,
//! the count of live sidecars, and upstream throttles learned by one sidecar
//! and applied by all.
//!
//! * **Leasing.** A sidecar never asks Redis per call. It leases a block of
//!   permits (one atomic Lua script: refill the bucket by elapsed time, grant
//!   up to the block, return what an expired lease left unused) into a local
//!   bucket, and calls consume from there. Block size follows the sidecar's
//!   own recent demand, capped at its fair share, so a busy pod does not
//!   starve a quiet one. Every permit comes out of the one Redis bucket, so
//!   the fleet total over any window `T` is at most `rate × T + burst`, the
//!   same bound as a single bucket.
//! * **Presence.** Each sidecar refreshes its entry in a sorted set every
//!   second; entries older than 3 s are dropped. The live count sizes the
//!   fallback share.
//! * **Upstream holds.** A quota an upstream announced (see
//!   [`crate::policy::quota`]) is published for the sidecars running now and
//!   kept in a sorted set (origin → until, Redis time) for the ones that
//!   start, or reconnect, later: they read it before serving. Entries go
//!   when their hold ends; the key expires with the last one. Delivery is
//!   bounded whatever publishes to the channel (see [`throttles`]).
//! * **Failure.** When Redis cannot be reached, or refuses the heartbeat
//!   (out of memory, a read-only replica, no permission), fleet limits fall
//!   back per their `on_redis_error`; a reconnect is tried in the background
//!   and fleet mode resumes by itself. Both transitions are logged and
//!   counted. A Redis that answers but refuses one bucket's lease (its key
//!   holds another type, or data the script cannot read) is that bucket's
//!   problem: it falls back alone for a while (see [`lease`]) and fleet mode
//!   stays on for the others.

pub mod lease;
pub mod throttles;
mod url;

pub use url::RedisUrl;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus::{IntCounterVec, IntGauge};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

/// Takes a lease: refill by elapsed Redis time, return `returned`, grant up
/// to `want`, and if nothing was granted, say how long until `want` permits
/// will be there (so a refused sidecar comes back once, for a whole block).
/// KEYS[1] bucket; ARGV rate_per_ms, burst, want, returned, ttl_ms.
const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local returned = tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate + returned)
local granted = 0
if tokens >= 1 then granted = math.min(want, math.floor(tokens)) end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local wait = 0
if granted == 0 then wait = math.ceil((math.min(want, burst) - tokens) / rate) end
return {granted, wait}
"#;

/// Refreshes this sidecar's presence and counts the live ones.
/// KEYS[1] set; ARGV id, stale_ms.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZCARD', KEYS[1])
"#;

/// Records a hold on an origin, keeping the later end when one is in force.
/// KEYS[1] holds set; ARGV origin, wait_ms.
const HOLD: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[2])
local cur = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if cur == nil or cur < untl then
  redis.call('ZADD', KEYS[1], string.format('%d', untl), ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(last[2])))
end
return 1
"#;

/// The holds in force, those that end last first: a flat list of origin,
/// milliseconds left. Bounded whatever else writes to the set: at most
/// ARGV[1] entries, origins longer than ARGV[2] bytes skipped (looking at no
/// more than four times ARGV[1] entries, a page at a time, for the rest).
/// KEYS[1] holds set.
const HOLDS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
local limit = tonumber(ARGV[1])
local longest = tonumber(ARGV[2])
local out = {}
local found = 0
local start = 0
while found < limit and start < limit * 4 do
  local r = redis.call('ZREVRANGE', KEYS[1], start, start + 1023, 'WITHSCORES')
  for i = 1, #r, 2 do
    if found < limit and #r[i] <= longest then
      out[#out + 1] = r[i]
      out[#out + 1] = string.format('%d', tonumber(r[i + 1]) - now)
      found = found + 1
    end
  end
  if #r < 2048 then break end
  start = start + 1024
end
return out
"#;

const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const STALE_AFTER_MS: u64 = 3000;
/// A single Redis command may take this long before the fleet counts as
/// unreachable (and limits fall back).
const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// Channel on which learned upstream throttles are broadcast.
pub const THROTTLE_CHANNEL: &str = "tandem:throttle";

/// Why a Redis operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetError {
    /// No answer: not connected, the connection failed, or no reply within
    /// the command timeout. Fleet mode is off until Redis answers again.
    Unreachable(String),
    /// Redis answered with an error: a key of another type, out of memory,
    /// a read-only replica, no permission, a reply of an unexpected shape.
    Refused(String),
}

impl std::fmt::Display for FleetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(why) => write!(f, "Redis is unreachable ({why})"),
            Self::Refused(why) => write!(f, "Redis refused the command ({why})"),
        }
    }
}

impl FleetError {
    fn of(e: &redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        let answered = match e.kind() {
            // Replies that say the server cannot serve right now, rather than
            // that it refuses this command: the same as no answer.
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown,
            ) => false,
            ErrorKind::Server(_)
            | ErrorKind::Extension
            | ErrorKind::UnexpectedReturnType
            | ErrorKind::AuthenticationFailed => true,
            _ => false,
        };
        if answered {
            Self::Refused(e.to_string())
        } else {
            Self::Unreachable(e.to_string())
        }
    }
}

/// Metrics the fleet reports.
#[derive(Clone)]
pub struct FleetMetrics {
    /// `sidecar_fleet_redis_commands_total{op}`
    pub commands: IntCounterVec,
    /// `sidecar_fleet_redis_errors_total{op}`
    pub errors: IntCounterVec,
    /// `sidecar_fleet_connected`: 1 in fleet mode (Redis answers the heartbeat), else 0.
    pub connected: IntGauge,
    /// `sidecar_fleet_live_sidecars`
    pub live: IntGauge,
    /// `sidecar_fleet_throttles_dropped_total{reason}`
    pub throttles_dropped: throttles::DropCounters,
}

pub struct Fleet {
    id: String,
    prefix: String,
    client: redis::Client,
    /// The password in `--redis-url`, removed from anything said about a
    /// failure (see [`Fleet::classify`]).
    password: Option<String>,
    /// The same server over RESP3, for pushed throttles (see [`throttles`]).
    push_client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    healthy: AtomicBool,
    /// Why fleet mode went off last (what a `deny` limit tells the caller).
    down_reason: std::sync::Mutex<Arc<str>>,
    live: AtomicU32,
    lease: redis::Script,
    heartbeat: redis::Script,
    hold: redis::Script,
    holds: redis::Script,
    metrics: FleetMetrics,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("id", &self.id)
            .field("healthy", &self.healthy())
            .field("live", &self.live())
            .finish()
    }
}

/// What Redis answered to a lease request.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub granted: u64,
    pub wait: Duration,
}

impl Fleet {
    /// Connects in the background; until Redis answers, [`Fleet::healthy`]
    /// is false and fleet limits use their fallback.
    pub fn start(
        url: &str,
        metrics: FleetMetrics,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, String> {
        let fleet = Self::offline(url, metrics)?;
        tokio::spawn(fleet.clone().maintain(stop));
        Ok(fleet)
    }

    /// A fleet that never connects: it joins nothing and sends nothing, so
    /// `--check-config` can compile fleet limits without registering as a
    /// live sidecar (which would shrink every real sidecar's share).
    pub fn offline(url: &str, metrics: FleetMetrics) -> Result<Arc<Self>, String> {
        let parsed = redis::Client::open(url).map_err(|e| format!("--redis-url: {e}"))?;
        let info = parsed.get_connection_info().clone();
        let password = info.redis_settings().password().map(str::to_owned);
        // Limits and presence on RESP2 whatever the URL says (`?protocol=`):
        // the scripts' replies are read as RESP2 shapes, and RESP2 needs no
        // `HELLO`, which Redis before 6 lacks. Pushed throttles need RESP3.
        let with = |protocol| {
            let settings = info.redis_settings().clone().set_protocol(protocol);
            redis::Client::open(info.clone().set_redis_settings(settings))
                .map_err(|e| format!("--redis-url: {e}"))
        };
        let client = with(redis::ProtocolVersion::RESP2)?;
        let push_client = with(redis::ProtocolVersion::RESP3)?;
        let id = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "sidecar".into()),
            std::process::id(),
            fastrand::u32(..)
        );
        let fleet = Arc::new(Self {
            id,
            prefix: "tandem".into(),
            client,
            password,
            push_client,
            conn: ArcSwapOption::empty(),
            healthy: AtomicBool::new(false),
            down_reason: std::sync::Mutex::new(Arc::from("Redis has not answered yet")),
            live: AtomicU32::new(1),
            lease: redis::Script::new(LEASE),
            heartbeat: redis::Script::new(HEARTBEAT),
            hold: redis::Script::new(HOLD),
            holds: redis::Script::new(HOLDS),
            metrics,
        });
        Ok(fleet)
    }

    /// Waits (up to `timeout`) for the first successful contact with Redis,
    /// so a sidecar does not start out on its fallback share.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let end = tokio::time::Instant::now() + timeout;
        while !self.healthy() {
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Why fleet mode is off (meaningful while [`Fleet::healthy`] is false).
    pub fn down_reason(&self) -> Arc<str> {
        self.down_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Live sidecars as last seen (at least 1: this one).
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed).max(1)
    }

    pub fn bucket_key(&self, parts: &str) -> String {
        format!("{}:rl:{parts}", self.prefix)
    }

    /// Connects, then heartbeats every second; notices outages and
    /// recoveries.
    async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.conn.load().is_none() {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT * 4))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(1);
                match self.client.get_connection_manager_with_config(config).await {
                    Ok(conn) => self.conn.store(Some(Arc::new(conn))),
                    Err(e) => {
                        // No answer, or an answer that refuses this sidecar
                        // (a wrong password, an ACL user that may not log in).
                        self.mark(Some(&self.classify(&e)));
                        continue;
                    }
                }
            }
            let key = format!("{}:sidecars", self.prefix);
            let beat = self
                .run("heartbeat", |mut conn| {
                    let mut invocation = self.heartbeat.key(&key);
                    invocation.arg(&self.id).arg(STALE_AFTER_MS);
                    async move { invocation.invoke_async::<u32>(&mut conn).await }
                })
                .await;
            match beat {
                Ok(live) => {
                    self.live.store(live, Ordering::Relaxed);
                    self.metrics.live.set(i64::from(live));
                    self.mark(None);
                }
                // The heartbeat is the fleet's own probe: a Redis that refuses it
                // (out of memory, read-only, no permission) will refuse leases too,
                // and this sidecar is missing from the live count.
                Err(e @ FleetError::Refused(_)) => self.mark(Some(&e)),
                Err(FleetError::Unreachable(_)) => {} // marked by `run`
            }
        }
        // Leave the fleet promptly so the others' shares grow at once.
        if let Some(conn) = self.conn.load_full() {
            let mut conn = (*conn).clone();
            let _: Result<(), _> = tokio::time::timeout(
                COMMAND_TIMEOUT,
                redis::cmd("ZREM")
                    .arg(format!("{}:sidecars", self.prefix))
                    .arg(&self.id)
                    .query_async::<()>(&mut conn),
            )
            .await
            .unwrap_or(Ok(()));
        }
    }

    /// Runs one Redis operation with the command timeout. No answer turns
    /// fleet mode off; only a heartbeat turns it back on (see
    /// [`Fleet::maintain`]), so one good lease cannot flip it on and the
    /// next failure off again. A refusal changes nothing here: whether it
    /// concerns the fleet or one key is the caller's to say.
    async fn run<T, F, Fut>(&self, op: &str, f: F) -> Result<T, FleetError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let outcome = self.run_unmarked(op, f).await;
        if let Err(error @ FleetError::Unreachable(_)) = &outcome {
            self.mark(Some(error));
        }
        outcome
    }

    /// [`Fleet::run`] for work beside the limits (reading stored holds),
    /// whose failure says nothing about fleet mode: it changes nothing.
    async fn run_unmarked<T, F, Fut>(&self, op: &str, f: F) -> Result<T, FleetError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(conn) = self.conn.load_full() else {
            return Err(FleetError::Unreachable("not connected".into()));
        };
        // A clone shares the one multiplexed connection.
        let conn = (*conn).clone();
        self.metrics.commands.with_label_values(&[op]).inc();
        let outcome = tokio::time::timeout(COMMAND_TIMEOUT, f(conn)).await;
        let error = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => self.classify(&e),
            Err(_) => FleetError::Unreachable(format!("no answer within {COMMAND_TIMEOUT:?}")),
        };
        self.metrics.errors.with_label_values(&[op]).inc();
        Err(error)
    }

    /// [`FleetError::of`] with the password removed from Redis's words: a
    /// server can repeat a command's arguments in its reply (redis-rs logs
    /// in with `HELLO 3 AUTH user password`), and these words reach logs
    /// and the `deny` limit's message.
    fn classify(&self, e: &redis::RedisError) -> FleetError {
        let mut error = FleetError::of(e);
        let (FleetError::Unreachable(text) | FleetError::Refused(text)) = &mut error;
        // Redis cuts the arguments it repeats after this (to 128 bytes, so a
        // long password comes back cut and would not match below): keep none.
        if let Some(at) = text.find(", with args beginning with:") {
            text.truncate(at);
        }
        if let Some(secret) = self.password.as_deref().filter(|p| !p.is_empty()) {
            if text.contains(secret) {
                *text = text.replace(secret, "***");
            }
        }
        error
    }

    /// Turns fleet mode on (`None`) or off (`Some(why)`), logging a change.
    fn mark(&self, down: Option<&FleetError>) {
        let healthy = down.is_none();
        if let Some(why) = down {
            *self.down_reason.lock().unwrap_or_else(|e| e.into_inner()) =
                Arc::from(why.to_string());
        }
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        self.metrics.connected.set(i64::from(healthy));
        match (was, down) {
            (false, None) => {
                tracing::info!(id = %self.id, "fleet limits: Redis answers, fleet mode on")
            }
            (true, Some(FleetError::Unreachable(e))) => tracing::warn!(
                id = %self.id,
                error = %e,
                live = self.live(),
                "fleet limits: Redis unreachable, falling back per on_redis_error"
            ),
            (true, Some(FleetError::Refused(e))) => tracing::warn!(
                id = %self.id,
                error = %e,
                live = self.live(),
                "fleet limits: Redis refuses the heartbeat, falling back per on_redis_error"
            ),
            _ => {}
        }
    }

    /// Leases up to `want` permits from `key`, returning `returned` unused
    /// ones first.
    pub async fn lease(
        &self,
        key: &str,
        rate_per_second: f64,
        burst: u64,
        want: u64,
        returned: u64,
        ttl: Duration,
    ) -> Result<Lease, FleetError> {
        let (granted, wait_ms): (u64, u64) = self
            .run("lease", |mut conn| {
                let mut invocation = self.lease.key(key);
                invocation
                    .arg(rate_per_second / 1000.0)
                    .arg(burst)
                    .arg(want)
                    .arg(returned)
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(Lease {
            granted,
            wait: Duration::from_millis(wait_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::FleetError;
    use redis::{make_extension_error, ErrorKind, RedisError, ServerErrorKind};

    fn class(e: RedisError) -> &'static str {
        match FleetError::of(&e) {
            FleetError::Unreachable(_) => "unreachable",
            FleetError::Refused(_) => "refused",
        }
    }

    #[test]
    fn an_error_reply_is_a_refusal_and_no_answer_is_an_outage() {
        // Replies that refuse this command: Redis is there.
        for code in ["WRONGTYPE", "OOM", "NOAUTH", "MISCONF"] {
            assert_eq!(
                class(make_extension_error(code.into(), None)),
                "refused",
                "{code}"
            );
        }
        assert_eq!(
            class((ErrorKind::Server(ServerErrorKind::ReadOnly), "ro").into()),
            "refused"
        );
        assert_eq!(
            class((ErrorKind::UnexpectedReturnType, "shape").into()),
            "refused"
        );
        assert_eq!(
            class((ErrorKind::AuthenticationFailed, "WRONGPASS").into()),
            "refused"
        );
        // Replies that say it cannot serve now, and no reply at all: an outage.
        for kind in [ServerErrorKind::BusyLoading, ServerErrorKind::MasterDown] {
            assert_eq!(
                class((ErrorKind::Server(kind), "not now").into()),
                "unreachable"
            );
        }
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(class(reset.into()), "unreachable");
        assert_eq!(class((ErrorKind::Parse, "garbage").into()), "unreachable");
    }

    #[test]
    fn the_password_is_not_repeated_from_redis_words() {
        let metrics = crate::metrics::Metrics::new();
        let url = "rediss://tandem:s3cret-pw@127.0.0.1:6380/0";
        let fleet = super::Fleet::offline(url, metrics.fleet.clone()).unwrap();
        let echoed = make_extension_error(
            "ERR".into(),
            Some("unknown command 'HELLO', with args beginning with: '3' 'AUTH' 'tandem' 's3cret-pw'".into()),
        );
        let said = fleet.classify(&echoed).to_string();
        assert!(!said.contains("s3cret-pw"), "{said}");
        assert!(!said.contains("AUTH"), "{said}");
        assert!(said.contains("unknown command 'HELLO'"), "{said}");
        // Anything else that repeats it.
        let other = make_extension_error("ERR".into(), Some("no s3cret-pw here".into()));
        assert!(fleet.classify(&other).to_string().contains("no *** here"));
        // A long password, repeated cut short.
        let long = "p".repeat(200);
        let url = format!("rediss://tandem:{long}@127.0.0.1:6380/0");
        let fleet = super::Fleet::offline(&url, metrics.fleet.clone()).unwrap();
        let cut = make_extension_error(
            "ERR".into(),
            Some(format!(
                "unknown command 'HELLO', with args beginning with: '3' 'AUTH' 'tandem' '{}'",
                &long[..100]
            )),
        );
        assert!(!fleet.classify(&cut).to_string().contains("ppppp"));
    }
}
