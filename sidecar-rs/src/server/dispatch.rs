//! The gRPC `Dispatcher` service: admission (in-flight and undelivered
//! bounds, draining) and the per-stream bookkeeping that guarantees exactly
//! one result per call.
//!
//! Each Dispatch stream gets one task (`Session::run`) that owns the map of
//! calls in flight on it, so no lock is needed. Every admitted call runs in a
//! task of its own and reports back through a channel; the session batches
//! whatever results are ready into one ResultFrame.
//!
//! A call holds a [`Claim`] from admission until the transport takes its
//! result: its in-flight slots (process and stream) and, once it has a result,
//! that result's bytes in the undelivered backlogs. A client that stops
//! reading therefore runs out of slots and gets OVERLOADED, and past its
//! stream's backlog bound the session stops reading its calls (HTTP/2 flow
//! control pushes back; the frames socket still takes the releases of its
//! shared region, see [`Inbound::releases`]). Memory held for unread results
//! is bounded by `--max-inflight` results, about `--max-undelivered-bytes`
//! bytes, plus per stream the refusals of one request frame, the frame being
//! written and, on the frames socket, about 1 MiB of calls read ahead.
//!
//! The session watches the client: when it cancels the RPC or its connection
//! drops, the response side closes and every call of the stream is cancelled
//! at once (`sidecar_streams_abandoned_total`). A stream that ends because its
//! request side failed (e.g. a message over the size limit) first answers
//! every call in flight (CANCELLED), then ends with that error; a stream that
//! ends without saying how ends with INTERNAL, never OK.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prometheus::IntGauge;
use prost::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Streaming};

use crate::call::Executor;
use crate::error::CallError;
use crate::metrics::Metrics;
use crate::pb::dispatcher_server::Dispatcher;
use crate::pb::{
    DispatchFrame, ListToolsRequest, ListToolsResponse, ResultFrame, ToolCall, ToolResult,
};
use crate::server::drain::Drain;

/// A ResultFrame is flushed once its encoded results reach this size, keeping
/// frames well under the client's receive limit; a single larger result
/// travels alone.
const FRAME_BYTES: usize = 1 << 20;

/// Frames queued between a session and the transport. Few, because what
/// waits here is still undelivered; the transport takes the next one as the
/// client's flow-control window allows.
const QUEUED_FRAMES: usize = 2;

/// Results gathered from finished calls per turn of a session's loop.
const GATHER: usize = 1024;

/// Under load, the least time between two result frames of a stream (tokio's
/// timer rounds it up to its 1 ms tick). Each frame costs the brain far more
/// than each result in it (a grpc.aio read, a loop wake-up), so while frames
/// would go out faster than this, ready results wait for the rest of the
/// interval and share one: frames grow with the load and their rate stays
/// bounded until they are full. See [`Session::lingers`] for when.
const LINGER: Duration = Duration::from_micros(500);

/// Admission bounds. Past any of them, a call is refused with OVERLOADED at
/// once: there is no queue to wait in.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Calls admitted in the whole process whose results the transport has
    /// not yet taken (running, or finished and waiting for the client).
    pub max_inflight: usize,
    /// The same for one Dispatch stream.
    pub max_inflight_per_stream: usize,
    /// Bytes of results waiting for their clients in the whole process.
    pub max_undelivered_bytes: usize,
    /// Bytes of results waiting for the client of one Dispatch stream; past
    /// it the stream's frames are not read until the client reads.
    pub max_undelivered_bytes_per_stream: usize,
}

/// What every call passes, on Dispatch and Invoke alike.
struct Gate {
    drain: Drain,
    global: Arc<Semaphore>,
    max_undelivered_bytes: usize,
    /// `sidecar_undelivered_result_bytes`: the process-wide count itself.
    undelivered_bytes: IntGauge,
}

impl Gate {
    /// A process-wide slot for one call, or why there is none.
    fn admit(&self) -> Result<OwnedSemaphorePermit, CallError> {
        if self.drain.is_draining() {
            return Err(CallError::Draining);
        }
        if usize::try_from(self.undelivered_bytes.get()).unwrap_or(0) >= self.max_undelivered_bytes
        {
            return Err(CallError::Overloaded(
                "results not yet read by their clients fill the sidecar's buffer",
            ));
        }
        self.global
            .clone()
            .try_acquire_owned()
            .map_err(|_| CallError::Overloaded("the sidecar is at its in-flight call limit"))
    }
}

/// The rules a call envelope follows on every RPC.
fn check_envelope(call: &ToolCall) -> Result<(), CallError> {
    if call.call_id.is_empty() {
        return Err(CallError::EmptyCallId);
    }
    Ok(())
}

pub struct DispatchService {
    exec: Arc<Executor>,
    gate: Arc<Gate>,
    per_stream: usize,
    max_stream_bytes: usize,
}

impl DispatchService {
    pub fn metrics(&self) -> &Metrics {
        self.exec.metrics()
    }

    pub fn new(exec: Arc<Executor>, admission: Admission, drain: Drain) -> Self {
        let undelivered_bytes = exec.metrics().undelivered_bytes.clone();
        Self {
            gate: Arc::new(Gate {
                drain,
                global: Arc::new(Semaphore::new(admission.max_inflight)),
                max_undelivered_bytes: admission.max_undelivered_bytes,
                undelivered_bytes,
            }),
            exec,
            per_stream: admission.max_inflight_per_stream.max(1),
            max_stream_bytes: admission.max_undelivered_bytes_per_stream,
        }
    }

    /// Starts a Dispatch session reading `inbound`; what it sends the client
    /// comes out of the returned channel, which the transport drains (gRPC's
    /// response stream, or [`crate::server::frames`]). Dropping the receiver
    /// is the client going away: every call of the session is cancelled.
    pub(crate) fn open(&self, inbound: impl Inbound) -> Result<mpsc::Receiver<Out>, tonic::Status> {
        if self.gate.drain.is_draining() {
            return Err(tonic::Status::unavailable(
                "sidecar is draining; reconnect to another",
            ));
        }
        let (out_tx, out_rx) = mpsc::channel(QUEUED_FRAMES);
        let metrics = self.exec.metrics();
        let session = Session {
            exec: self.exec.clone(),
            gate: self.gate.clone(),
            stream_slots: Arc::new(Semaphore::new(self.per_stream)),
            per_stream: self.per_stream,
            max_stream_bytes: self.max_stream_bytes,
            backlog: Backlog {
                stream: Arc::default(),
                results: metrics.undelivered_results.clone(),
                bytes: metrics.undelivered_bytes.clone(),
            },
            token: self.gate.drain.child_token(),
            inflight: HashMap::default(),
            ready: VecDeque::new(),
            ready_bytes: 0,
        };
        tokio::spawn(session.run(inbound, out_tx));
        Ok(out_rx)
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<ResultFrame, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Dispatcher for DispatchService {
    type DispatchStream = ResultStream;

    async fn dispatch(
        &self,
        request: Request<Streaming<DispatchFrame>>,
    ) -> Result<Response<Self::DispatchStream>, tonic::Status> {
        let out = self.open(request.into_inner())?;
        Ok(Response::new(results(out)))
    }

    async fn invoke(
        &self,
        request: Request<ToolCall>,
    ) -> Result<Response<ToolResult>, tonic::Status> {
        let received = Instant::now();
        let transport_deadline = grpc_timeout(request.metadata()).map(|t| received + t);
        let mut call = request.into_inner();
        let result = match check_envelope(&call).and_then(|()| self.gate.admit()) {
            Err(e) => self.exec.reject(call, e, received),
            Ok(_permit) => {
                let _gauge = InflightGauge::new(&self.exec);
                // Dropping this future (client cancelled) drops the upstream
                // request; the token covers the drain timeout.
                let token = self.gate.drain.child_token();
                self.exec
                    .execute(&mut call, received, transport_deadline, &token)
                    .await
            }
        };
        Ok(Response::new(result))
    }

    async fn list_tools(
        &self,
        _request: Request<ListToolsRequest>,
    ) -> Result<Response<ListToolsResponse>, tonic::Status> {
        Ok(Response::new(ListToolsResponse {
            tools: self.exec.registry().describe(),
        }))
    }
}

/// Where a session reads the client's frames from: a gRPC request stream or
/// a framed socket ([`crate::server::frames`]).
pub(crate) trait Inbound: Send + 'static {
    /// The next frame; `Ok(None)` once the client has half-closed. An error
    /// ends the stream with that status after every call in flight has been
    /// answered CANCELLED. A client that went away is seen by the transport
    /// dropping the session's receiver.
    fn message(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<DispatchFrame>, tonic::Status>> + Send;

    /// While the session reads no further calls (its backlog is full): takes
    /// what the client sends that frees the backlog, keeping the frames it
    /// reads past that are the session's (a bounded amount) for the next
    /// [`Inbound::message`]s. Never completes. The frames socket's releases
    /// of the shared region are such: the client has copied those results
    /// out, and the writer needs the room to send the results the backlog
    /// holds through the region. The client sends calls between them, so
    /// reading no further would leave the releases behind the first unread
    /// call while the results wait for them. gRPC streams have none.
    fn releases(&mut self) -> impl std::future::Future<Output = Infallible> + Send {
        std::future::pending()
    }
}

impl Inbound for Streaming<DispatchFrame> {
    fn message(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<DispatchFrame>, tonic::Status>> + Send
    {
        Streaming::message(self)
    }
}

/// How a stream ends whose session went away without an [`Out::End`] (it
/// cannot, short of a bug): never OK, so a client never mistakes a lost call
/// for a finished stream.
pub(crate) const UNANSWERED: &str = "the Dispatch stream ended before its calls were answered";

/// What a session hands the transport.
pub(crate) enum Out {
    /// Results, with the claims released once the transport takes them.
    Frame(ResultFrame, Vec<Claim>),
    /// The end of the stream: OK, or the error that ended it.
    End(Option<tonic::Status>),
}

/// The response stream of one session. Claims are released as the transport
/// takes their frame. A session that goes away without an [`Out::End`] (it
/// cannot, short of a bug) ends the stream with INTERNAL rather than OK, so
/// a client never mistakes a lost call for a finished stream.
fn results(rx: mpsc::Receiver<Out>) -> ResultStream {
    Box::pin(futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let status = match rx.recv().await {
            Some(Out::Frame(frame, claims)) => {
                drop(claims);
                return Some((Ok(frame), Some(rx)));
            }
            Some(Out::End(None)) => return None,
            Some(Out::End(Some(status))) => status,
            None => tonic::Status::internal(UNANSWERED),
        };
        Some((Err(status), None))
    }))
}

/// Results waiting for the client of one stream, and for all clients.
#[derive(Clone)]
struct Backlog {
    stream: Arc<StreamBacklog>,
    /// `sidecar_undelivered_results` and `_bytes`: the process-wide counts.
    results: IntGauge,
    bytes: IntGauge,
}

#[derive(Default)]
struct StreamBacklog {
    results: AtomicUsize,
    bytes: AtomicUsize,
    /// Notified as the transport takes results, so a session that stopped
    /// reading calls at its bound looks again: with its results all handed
    /// to the transport (one held, say, until its client releases room in
    /// the shared region), nothing else would wake it.
    taken: tokio::sync::Notify,
}

impl Backlog {
    /// Counts `result` as waiting for the client until the claim is dropped.
    fn claim(&self, result: &ToolResult, slots: Option<Slots>) -> Claim {
        let bytes = result.encoded_len();
        self.stream.results.fetch_add(1, Ordering::Relaxed);
        self.stream.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.results.inc();
        self.bytes.add(i64::try_from(bytes).unwrap_or(i64::MAX));
        Claim {
            backlog: self.clone(),
            bytes,
            _slots: slots,
        }
    }
}

/// A call's in-flight slots: the process's and its stream's.
type Slots = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// A result's hold on the sidecar until the transport takes it: its bytes in
/// the backlogs and, for a call that ran, its in-flight slots.
pub(crate) struct Claim {
    backlog: Backlog,
    bytes: usize,
    _slots: Option<Slots>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.backlog.stream.results.fetch_sub(1, Ordering::Relaxed);
        self.backlog
            .stream
            .bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
        // A permit when nobody waits: a session that has not yet begun to
        // wait still sees it.
        self.backlog.stream.taken.notify_one();
        self.backlog.results.dec();
        self.backlog
            .bytes
            .sub(i64::try_from(self.bytes).unwrap_or(i64::MAX));
    }
}

/// One Dispatch stream.
struct Session {
    exec: Arc<Executor>,
    gate: Arc<Gate>,
    /// In-flight slots of this stream, held like the process's.
    stream_slots: Arc<Semaphore>,
    per_stream: usize,
    max_stream_bytes: usize,
    backlog: Backlog,
    /// Parent of every call's token: cancelled when the stream ends.
    token: CancellationToken,
    /// Hashed with foldhash, not SipHash: looked up twice per call (about
    /// 500 instructions with SipHash), keyed by the stream's own client,
    /// who is the only one a collision attack could slow.
    inflight: HashMap<String, CancellationToken, foldhash::fast::RandomState>,
    /// Results waiting to be sent.
    ready: VecDeque<(ToolResult, Claim)>,
    /// Their bytes, as the frame budget counts them.
    ready_bytes: usize,
}

impl Session {
    async fn run(mut self, mut inbound: impl Inbound, out: mpsc::Sender<Out>) {
        let metrics = self.exec.metrics().clone();
        metrics.streams.inc();
        // Never full: a call holds a stream slot until its result is taken.
        let (done_tx, mut done_rx) = mpsc::channel::<(ToolResult, Claim)>(self.per_stream);
        let mut inbound_open = true;
        // Why the request side ended, when it failed.
        let mut failed: Option<tonic::Status> = None;
        let drain = self.gate.drain.clone();
        // When the last frame went out, and the timer that ends a linger.
        let mut last_sent = Instant::now()
            .checked_sub(LINGER)
            .unwrap_or_else(Instant::now);
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        let mut armed = false;
        let client_gone = loop {
            let settled = self.inflight.is_empty() && self.ready.is_empty();
            if settled && (!inbound_open || drain.is_draining()) {
                break false;
            }
            let due = last_sent + LINGER;
            let send = if self.ready.is_empty() {
                false
            } else if !self.lingers(inbound_open) || Instant::now() >= due {
                true
            } else {
                if !armed {
                    armed = true;
                    linger.as_mut().reset(due);
                }
                false
            };
            // Backpressure: a client that does not read gets its calls read
            // no further than its backlog bound (its releases still are).
            let read = !self.backlog_full();
            tokio::select! {
                biased;
                // The client cancelled the RPC or its connection dropped.
                () = out.closed() => break true,
                permit = out.reserve(), if send => match permit {
                    Ok(permit) => {
                        permit.send(self.next_frame());
                        last_sent = Instant::now();
                    }
                    Err(_) => break true,
                },
                () = &mut linger, if armed => armed = false,
                // Past the bound: the transport took results; look again.
                () = self.backlog.stream.taken.notified(), if inbound_open && !read => {}
                Some((result, claim)) = done_rx.recv() => {
                    self.complete(result, claim);
                    for _ in 1..GATHER {
                        let Ok((result, claim)) = done_rx.try_recv() else { break };
                        self.complete(result, claim);
                    }
                }
                message = async {
                    if read {
                        inbound.message().await
                    } else {
                        match inbound.releases().await {}
                    }
                }, if inbound_open => match message {
                    Ok(Some(frame)) => self.accept(frame, &done_tx),
                    Ok(None) => inbound_open = false,
                    Err(status) => {
                        tracing::debug!(
                            code = ?status.code(),
                            error = status.message(),
                            calls = self.inflight.len(),
                            "the request side of a Dispatch stream failed; answering its calls, then ending it"
                        );
                        inbound_open = false;
                        self.token.cancel();
                        failed = Some(status);
                    }
                },
                // Wakes the loop so an idle stream ends when draining starts.
                () = drain.draining(), if !drain.is_draining() => {}
            }
        };
        // Nothing of this stream may keep running.
        self.token.cancel();
        if client_gone {
            metrics.streams_abandoned.inc();
            tracing::debug!(
                calls = self.inflight.len(),
                "client went away; cancelled its calls"
            );
        } else {
            tokio::select! {
                _ = out.send(Out::End(failed)) => {}
                () = out.closed() => {}
            }
        }
        metrics.streams.dec();
    }

    /// Whether ready results may wait for company (until [`LINGER`] after the
    /// previous frame): only while more results are due (calls of this stream
    /// still running), the stream is not ending, and they do not fill a frame
    /// already. A stream sending fewer than one frame per [`LINGER`] never
    /// waits, and neither does a full frame: frames of 100 KB results hold
    /// ten, and one per linger (a 1 ms timer tick) capped a stream at about
    /// 10,000 such results a second, with the CPU idle.
    fn lingers(&self, inbound_open: bool) -> bool {
        inbound_open
            && !self.gate.drain.is_draining()
            && !self.inflight.is_empty()
            && self.ready_bytes < FRAME_BYTES
    }

    fn backlog_full(&self) -> bool {
        self.backlog.stream.results.load(Ordering::Relaxed) >= self.per_stream
            || self.backlog.stream.bytes.load(Ordering::Relaxed) >= self.max_stream_bytes
    }

    /// Admits or refuses each call of `frame` and applies its cancellations.
    fn accept(&mut self, frame: DispatchFrame, done: &mpsc::Sender<(ToolResult, Claim)>) {
        for call in frame.calls {
            let received = Instant::now();
            let slots = check_envelope(&call).and_then(|()| self.admit(&call));
            let slots = match slots {
                Ok(slots) => slots,
                Err(e) => {
                    let result = self.exec.reject(call, e, received);
                    let claim = self.backlog.claim(&result, None);
                    self.enqueue(result, claim);
                    continue;
                }
            };
            let token = self.token.child_token();
            self.inflight.insert(call.call_id.clone(), token.clone());
            // Boxed (see `call_task`).
            tokio::spawn(Box::pin(call_task(
                self.exec.clone(),
                call,
                received,
                token,
                self.backlog.clone(),
                slots,
                done.clone(),
            )));
        }
        for call_id in frame.cancel_call_ids {
            if let Some(token) = self.inflight.get(&call_id) {
                token.cancel();
            }
        }
    }

    /// The stream's and the process's slots for `call`, or why not.
    fn admit(&self, call: &ToolCall) -> Result<Slots, CallError> {
        if self.inflight.contains_key(&call.call_id) {
            return Err(CallError::DuplicateCallId(call.call_id.clone()));
        }
        if self.gate.drain.is_draining() {
            return Err(CallError::Draining);
        }
        if self.backlog.stream.bytes.load(Ordering::Relaxed) >= self.max_stream_bytes {
            return Err(CallError::Overloaded(
                "results this stream has not read yet fill its buffer; read them first",
            ));
        }
        let stream = self.stream_slots.clone().try_acquire_owned().map_err(|_| {
            CallError::Overloaded(
                "this stream is at its in-flight call limit (calls running or with results not yet read)",
            )
        })?;
        Ok((self.gate.admit()?, stream))
    }

    fn complete(&mut self, result: ToolResult, claim: Claim) {
        self.inflight.remove(&result.call_id);
        self.enqueue(result, claim);
    }

    fn enqueue(&mut self, result: ToolResult, claim: Claim) {
        self.ready_bytes += claim.bytes;
        self.ready.push_back((result, claim));
    }

    /// The next frame: ready results up to about [`FRAME_BYTES`].
    fn next_frame(&mut self) -> Out {
        let mut frame = ResultFrame::default();
        let mut claims = Vec::new();
        let mut size = 0;
        while let Some((_, claim)) = self.ready.front() {
            if !claims.is_empty() && size + claim.bytes > FRAME_BYTES {
                break;
            }
            size += claim.bytes;
            let Some((result, claim)) = self.ready.pop_front() else {
                break;
            };
            self.ready_bytes -= claim.bytes;
            frame.results.push(result);
            claims.push(claim);
        }
        Out::Frame(frame, claims)
    }
}
/// A call's task: the call run to its result, and the result handed to its
/// stream's session with the claim that holds its slots until the
/// transport takes it.
///
/// Spawned boxed: tokio copies a task's future whole, about eight times as
/// it spawns it and again at each change of its stage (1,650 of a tiny
/// call's 60,000 instructions at 2,592 bytes). The box costs one
/// allocation and the 128-byte cell beside it: unboxed, the cell was 2,816
/// bytes. Scenario 3, HTTP/2, three alternating rounds: 125, 138, 132 MiB
/// unboxed; 135, 139, 126 boxed (the spread of same-build rounds is as
/// wide), so the box stays for the instructions. A test holds its size
/// to mimalloc's 2,560-byte class.
#[allow(clippy::manual_async_fn)] // an async fn keeps its arguments twice
fn call_task(
    exec: Arc<Executor>,
    mut call: ToolCall,
    received: Instant,
    token: CancellationToken,
    backlog: Backlog,
    slots: Slots,
    done: mpsc::Sender<(ToolResult, Claim)>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let gauge = InflightGauge::new(&exec);
        let done_call = {
            let result = exec.execute(&mut call, received, None, &token).await;
            drop((gauge, call));
            let claim = backlog.claim(&result, Some(slots));
            (result, claim)
        };
        // The channel holds a stream's whole in-flight bound, so it has
        // room; waiting for room is the fallback, boxed so that its state
        // (0.7 KiB) is not part of every call's task while the call runs.
        // Either fails only when the session is gone, i.e. the client is.
        if let Err(mpsc::error::TrySendError::Full(done_call)) = done.try_send(done_call) {
            let _ = Box::pin(done.send(done_call)).await;
        }
    }
}

/// Keeps `sidecar_inflight_calls` in step with a call's lifetime, also when
/// its future is dropped midway.
struct InflightGauge(prometheus::IntGauge);

impl InflightGauge {
    fn new(exec: &Executor) -> Self {
        let gauge = exec.metrics().inflight.clone();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InflightGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `grpc-timeout` header (e.g. `250m`), which carries a unary call's
/// deadline.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most a call's task may hold: mimalloc's 2,560-byte size class
    /// (rustc 1.95: 2,560 bytes, test and release profiles alike).
    const MAX_CALL_TASK: usize = 2_560;

    /// Every call in flight holds its task's future, boxed (10,000 at once
    /// in scenario 3); at 2,592 bytes it took mimalloc's 3,072-byte class,
    /// 5 MiB more per 10,000 calls. Growing past the bound is a choice to
    /// make with scenario 3's numbers (`tests/bench/memory_ab.py`), not by
    /// accident: `cargo +nightly rustc --lib -- -Zprint-type-sizes` shows
    /// where the bytes go.
    #[test]
    fn a_call_task_fits_its_allocator_class() {
        let exec = Arc::new(Executor::new(
            Arc::new(arc_swap::ArcSwap::from_pointee(
                crate::config::registry::Registry::default(),
            )),
            Metrics::new(),
        ));
        let permits = Arc::new(Semaphore::new(2));
        let slots = (
            permits.clone().try_acquire_owned().unwrap(),
            permits.try_acquire_owned().unwrap(),
        );
        let backlog = Backlog {
            stream: Arc::default(),
            results: IntGauge::new("results", "results").unwrap(),
            bytes: IntGauge::new("bytes", "bytes").unwrap(),
        };
        let (done, _results) = mpsc::channel(1);
        let task = call_task(
            exec,
            ToolCall::default(),
            Instant::now(),
            CancellationToken::new(),
            backlog,
            slots,
            done,
        );
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= MAX_CALL_TASK,
            "a call's task grew to {size} bytes (bound {MAX_CALL_TASK})"
        );
    }

    #[test]
    fn parses_grpc_timeout() {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(250)));
        m.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(2)));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }
}
