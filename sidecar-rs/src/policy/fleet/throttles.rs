//! Upstream throttles shared by the fleet: published by the sidecar that
//! learned one, stored in Redis for sidecars that start later, and pushed to
//! the ones running now.
//!
//! **Bounded delivery.** redis-rs's `PubSub` type reads the socket into an
//! unbounded channel, so a publisher faster than this sidecar applies
//! messages grows it without end. Instead the subscription is a RESP3
//! connection whose reader hands each message to [`Inbox::deliver`]: it
//! parses it, drops it if malformed or oversized, and queues it in a bounded
//! queue, dropping it (and counting) when the queue is full. A flood costs
//! CPU, not memory (an oversized message is still read whole by redis-rs
//! before it is dropped: a transient cost per message). Nothing is lost for
//! good: every hold is also stored in Redis, and after drops the stored holds
//! are read again, each second until a read succeeds, so a dropped message
//! only makes its hold late.
//!
//! **Without a subscription** (Redis before 6 has no RESP3; an ACL may deny
//! the channel), the stored holds are read every second instead of pushed,
//! and the subscription is tried again every minute.
//!
//! Everything said about a failure (logs, down reasons) passes through
//! [`Fleet::classify`], which removes the Redis password: a server without
//! `HELLO` answers redis-rs's `HELLO 3 AUTH user password` by repeating its
//! arguments.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, PushInfo, PushKind, RedisError, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Fleet, FleetError, COMMAND_TIMEOUT, HEARTBEAT_EVERY, THROTTLE_CHANNEL};

/// Messages waiting to be applied; more are dropped (and the stored holds
/// read again). Applying one takes microseconds, so a full queue means a
/// flood, not a burst of real throttles.
const QUEUE: usize = 256;
/// Longest origin accepted from Redis (`scheme://host:port`, a DNS name is
/// at most 253 bytes). Longer ones are no origin a tool calls; dropping them
/// also bounds what the queue and the kept holds can hold.
const MAX_ORIGIN_LEN: usize = 512;
/// Most stored holds read at once (those that end last). A fleet holds a
/// few origins; more than this were written by something else.
const MAX_STORED_HOLDS: usize = 4096;
/// How often the subscription connection is pinged: a Redis that stops
/// answering without closing the socket is found within this plus the
/// reply timeout.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long to poll stored holds before trying RESP3 again.
const RESP3_RETRY: Duration = Duration::from_secs(60);

/// `sidecar_fleet_throttles_dropped_total{reason}` resolved once.
#[derive(Clone)]
pub struct DropCounters {
    pub queue_full: IntCounter,
    pub malformed: IntCounter,
}

/// A throttle message's payload, `<milliseconds>|<origin>`, or `None` when
/// it is not one.
fn parse_message(payload: &[u8]) -> Option<(&str, Duration)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (ms, origin) = text.split_once('|')?;
    let ms = ms.parse::<u64>().ok()?;
    acceptable_origin(origin).then_some((origin, Duration::from_millis(ms)))
}

fn acceptable_origin(origin: &str) -> bool {
    !origin.is_empty() && origin.len() <= MAX_ORIGIN_LEN
}

/// Where the subscription connection's reader leaves throttle messages.
struct Inbox {
    queue: mpsc::Sender<(Box<str>, Duration)>,
    /// Messages dropped for a full queue since the stored holds were read.
    overflowed: AtomicU64,
    /// Cancelled when redis-rs reports the connection closed.
    gone: CancellationToken,
    dropped: DropCounters,
}

impl Inbox {
    /// Called by redis-rs's connection task for each push; must not wait.
    fn deliver(&self, info: PushInfo) {
        match info.kind {
            PushKind::Disconnection => self.gone.cancel(),
            PushKind::Message => {
                let parsed = match info.data.get(1) {
                    Some(Value::BulkString(payload)) => parse_message(payload),
                    _ => None,
                };
                let Some((origin, wait)) = parsed else {
                    self.dropped.malformed.inc();
                    return;
                };
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    self.queue.try_send((origin.into(), wait))
                {
                    self.overflowed.fetch_add(1, Ordering::Relaxed);
                    self.dropped.queue_full.inc();
                }
            }
            // Subscription confirmations and kinds this connection does not ask for.
            _ => {}
        }
    }
}

/// Why following pushed throttles stopped.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Stopped,
    /// The connection failed or went away: subscribe again shortly.
    Lost(String),
    /// Redis has no RESP3 (`HELLO`), so it cannot push on this connection.
    NoResp3,
    /// Redis answered and refused the login or the subscription.
    Refused(String),
}

impl Ended {
    /// What a failed connect or subscribe means. `error` is the failure as
    /// [`Fleet::classify`] describes it (the password removed).
    fn after(e: &RedisError, error: FleetError) -> Self {
        // redis-rs says RESP3NotSupported for Redis before 6; a server with
        // HELLO renamed away answers like any unknown command.
        let no_hello = e.kind() == ErrorKind::RESP3NotSupported
            || e.detail()
                .is_some_and(|d| d.starts_with("unknown command 'HELLO'"));
        match error {
            _ if no_hello => Self::NoResp3,
            FleetError::Refused(why) => Self::Refused(why),
            FleetError::Unreachable(why) => Self::Lost(why),
        }
    }
}

impl Fleet {
    fn holds_key(&self) -> String {
        format!("{}:holds", self.prefix)
    }

    /// Tells every sidecar to hold requests to `origin` for `wait`: the ones
    /// running now by a message, later ones by the stored hold.
    pub async fn publish_throttle(&self, origin: &str, wait: Duration) {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let key = self.holds_key();
        let _ = self
            .run("hold", |mut conn| {
                let mut invocation = self.hold.key(&key);
                invocation.arg(origin).arg(wait_ms);
                async move { invocation.invoke_async::<i64>(&mut conn).await }
            })
            .await;
        let message = format!("{wait_ms}|{origin}");
        let _ = self
            .run("publish", |mut conn| {
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(THROTTLE_CHANNEL).arg(message);
                async move { cmd.query_async::<i64>(&mut conn).await }
            })
            .await;
    }

    /// The holds in force now, by origin, as stored by
    /// [`Fleet::publish_throttle`]. Empty (and logged) when Redis cannot be
    /// reached.
    pub async fn holds(&self) -> Vec<(String, Duration)> {
        self.stored_holds().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read upstream holds from Redis");
            Vec::new()
        })
    }

    async fn stored_holds(&self) -> Result<Vec<(String, Duration)>, FleetError> {
        let key = self.holds_key();
        // Unmarked: a slow read of the holds (Redis busy with a flood) is no
        // reason to send every limit to its fallback.
        let flat: Vec<String> = self
            .run_unmarked("holds", |mut conn| {
                let mut invocation = self.holds.key(&key);
                invocation.arg(MAX_STORED_HOLDS).arg(MAX_ORIGIN_LEN);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let mut holds = Vec::with_capacity(flat.len() / 2);
        let mut pairs = flat.into_iter();
        while let (Some(origin), Some(ms)) = (pairs.next(), pairs.next()) {
            if let (true, Ok(ms)) = (acceptable_origin(&origin), ms.parse::<u64>()) {
                holds.push((origin, Duration::from_millis(ms)));
            }
        }
        Ok(holds)
    }

    /// Applies the stored holds; false (quietly) when they could not be
    /// read, for the caller to try again.
    async fn apply_stored(&self, apply: &impl Fn(&str, Duration)) -> bool {
        let Ok(holds) = self.stored_holds().await else {
            return false;
        };
        for (origin, wait) in holds {
            apply(&origin, wait);
        }
        true
    }

    /// Delivers throttles published by other sidecars to `apply`, until
    /// `stop`: the stored holds each time the subscription starts (so holds
    /// published while this sidecar was away are not missed), then each
    /// message. Resubscribes after Redis outages.
    pub async fn follow_throttles(
        self: Arc<Self>,
        apply: impl Fn(&str, Duration) + Send + 'static,
        stop: CancellationToken,
    ) {
        // Whether holds are being polled for want of a subscription: warned
        // once when it starts, and an INFO when a subscription ends it.
        let mut polling = false;
        loop {
            let why = match self.follow_pushed(&apply, &stop, &mut polling).await {
                Ended::Stopped => return,
                Ended::Lost(e) => {
                    tracing::debug!(error = %e, "throttle subscription lost; resubscribing");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                    }
                    continue;
                }
                Ended::NoResp3 => {
                    "Redis has no RESP3 (HELLO; Redis 6 or later pushes throttles)".into()
                }
                Ended::Refused(e) => {
                    format!("Redis refuses this sidecar's subscription (login or channel): {e}")
                }
            };
            if !std::mem::replace(&mut polling, true) {
                tracing::warn!(
                    why = %why,
                    "fleet throttles: no subscription to tandem:throttle; reading the stored holds every second instead"
                );
            }
            if self
                .poll_stored(&apply, &stop, RESP3_RETRY)
                .await
                .is_break()
            {
                return;
            }
        }
    }

    /// Subscribes on a RESP3 connection and applies what it pushes until the
    /// connection is lost or `stop`; clears `polling` once subscribed.
    async fn follow_pushed(
        &self,
        apply: &impl Fn(&str, Duration),
        stop: &CancellationToken,
        polling: &mut bool,
    ) -> Ended {
        let (queue, mut messages) = mpsc::channel(QUEUE);
        let inbox = Arc::new(Inbox {
            queue,
            overflowed: AtomicU64::new(0),
            gone: CancellationToken::new(),
            dropped: self.metrics.throttles_dropped.clone(),
        });
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT * 4))
            .set_response_timeout(Some(COMMAND_TIMEOUT * 4))
            .set_push_sender({
                let inbox = inbox.clone();
                move |info| {
                    inbox.deliver(info);
                    Ok::<(), ()>(())
                }
            });
        let connect = async {
            let mut conn = self
                .push_client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            conn.subscribe(THROTTLE_CHANNEL).await?;
            Ok::<MultiplexedConnection, redis::RedisError>(conn)
        };
        let mut conn = tokio::select! {
            _ = stop.cancelled() => return Ended::Stopped,
            c = connect => match c {
                Ok(conn) => conn,
                Err(e) => return Ended::after(&e, self.classify(&e)),
            },
        };
        if std::mem::replace(polling, false) {
            tracing::info!(
                "fleet throttles: subscribed to tandem:throttle; holds are pushed again"
            );
        }
        // Holds stored while this sidecar was not subscribed; read again each
        // tick until a read succeeds, as after dropped messages.
        let mut reread = !self.apply_stored(apply).await;
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut since_ping = Duration::ZERO;
        let mut dropping: u64 = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ended::Stopped,
                _ = inbox.gone.cancelled() => return Ended::Lost("connection closed".into()),
                Some((origin, wait)) = messages.recv() => apply(&origin, wait),
                _ = tick.tick() => {
                    let dropped = inbox.overflowed.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        if dropping == 0 {
                            tracing::warn!(
                                queue = QUEUE,
                                "fleet throttles: messages arrive faster than they are applied; dropping the excess and reading the stored holds instead"
                            );
                        }
                        dropping += dropped;
                        reread = true;
                    }
                    if reread {
                        reread = !self.apply_stored(apply).await;
                    }
                    if dropped == 0 && dropping > 0 && !reread {
                        tracing::info!(
                            dropped = dropping,
                            "fleet throttles: caught up with the messages"
                        );
                        dropping = 0;
                    }
                    since_ping += HEARTBEAT_EVERY;
                    if since_ping >= PING_EVERY {
                        since_ping = Duration::ZERO;
                        let ping = redis::cmd("PING");
                        let ping = ping.query_async::<Value>(&mut conn);
                        // The connection's response timeout ends a PING first;
                        // this bounds the wait whatever redis-rs does.
                        match tokio::time::timeout(COMMAND_TIMEOUT * 4, ping).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return Ended::Lost(self.classify(&e).to_string()),
                            Err(_) => return Ended::Lost("no answer to PING".into()),
                        }
                    }
                }
            }
        }
    }

    /// Applies the stored holds every second for `span`, or until `stop`
    /// (`Break`).
    async fn poll_stored(
        &self,
        apply: &impl Fn(&str, Duration),
        stop: &CancellationToken,
        span: Duration,
    ) -> ControlFlow<()> {
        let end = tokio::time::Instant::now() + span;
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while tokio::time::Instant::now() < end {
            tokio::select! {
                _ = stop.cancelled() => return ControlFlow::Break(()),
                _ = tick.tick() => {
                    self.apply_stored(apply).await;
                }
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;

    fn inbox(capacity: usize) -> (Inbox, mpsc::Receiver<(Box<str>, Duration)>) {
        let (queue, rx) = mpsc::channel(capacity);
        let counter = |name| IntCounter::new(name, "test").unwrap();
        let inbox = Inbox {
            queue,
            overflowed: AtomicU64::new(0),
            gone: CancellationToken::new(),
            dropped: DropCounters {
                queue_full: counter("full"),
                malformed: counter("malformed"),
            },
        };
        (inbox, rx)
    }

    fn message(payload: &[u8]) -> PushInfo {
        PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(THROTTLE_CHANNEL.into()),
                Value::BulkString(payload.to_vec()),
            ],
        }
    }

    fn count(c: &IntCounter) -> u64 {
        c.collect()[0].get_metric()[0].get_counter().get_value() as u64
    }

    #[test]
    fn a_message_names_the_wait_then_the_origin() {
        assert_eq!(
            parse_message(b"1500|https://api.example:443"),
            Some(("https://api.example:443", Duration::from_millis(1500)))
        );
        for bad in [
            &b"https://api.example"[..],
            b"soon|https://api.example",
            b"-1|https://api.example",
            b"100|",
            b"100|\xff\xfe",
        ] {
            assert_eq!(parse_message(bad), None, "{bad:?}");
        }
        let long = format!("1|http://{}", "x".repeat(MAX_ORIGIN_LEN));
        assert_eq!(parse_message(long.as_bytes()), None);
    }

    #[test]
    fn a_full_queue_drops_and_remembers_that_it_did() {
        let (inbox, mut rx) = inbox(4);
        for i in 0..10 {
            inbox.deliver(message(format!("100|http://o{i}").as_bytes()));
        }
        inbox.deliver(message(b"not a throttle"));
        inbox.deliver(message(
            format!("1|http://{}", "x".repeat(100_000)).as_bytes(),
        ));
        assert_eq!(inbox.overflowed.load(Ordering::Relaxed), 6);
        assert_eq!(count(&inbox.dropped.queue_full), 6);
        assert_eq!(count(&inbox.dropped.malformed), 2);
        let kept: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(kept.len(), 4);
        assert_eq!(&*kept[0].0, "http://o0");
        // Room again: the next message is queued.
        inbox.deliver(message(b"100|http://later"));
        assert_eq!(&*rx.try_recv().unwrap().0, "http://later");
    }

    #[test]
    fn a_server_without_hello_is_told_from_a_refusal_and_an_outage() {
        let ended = |e: RedisError| Ended::after(&e, super::super::FleetError::of(&e));
        assert_eq!(
            ended((ErrorKind::RESP3NotSupported, "no HELLO").into()),
            Ended::NoResp3
        );
        let renamed = redis::make_extension_error(
            "ERR".into(),
            Some("unknown command 'HELLO', with args beginning with: '3' 'AUTH'".into()),
        );
        assert_eq!(ended(renamed), Ended::NoResp3);
        let noperm = redis::make_extension_error("NOPERM".into(), Some("channel".into()));
        assert!(matches!(ended(noperm), Ended::Refused(_)));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(matches!(ended(reset.into()), Ended::Lost(_)));
    }

    #[test]
    fn a_closed_connection_is_signalled_even_with_a_full_queue() {
        let (inbox, _rx) = inbox(1);
        inbox.deliver(message(b"1|http://a"));
        inbox.deliver(message(b"1|http://b"));
        assert!(!inbox.gone.is_cancelled());
        inbox.deliver(PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        });
        assert!(inbox.gone.is_cancelled());
    }
}
