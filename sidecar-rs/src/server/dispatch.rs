//! The gRPC `Dispatcher` service: admission (in-flight bounds, draining) and
//! the per-stream bookkeeping that guarantees exactly one result per call.
//!
//! Each Dispatch stream gets one task (`Session::run`) that owns the map of
//! calls in flight on it, so no lock is needed. Every admitted call runs in a
//! task of its own and reports back through a bounded channel; the session
//! batches whatever results are ready into one ResultFrame. A failed send to
//! the client means the client is gone: every call of the stream is
//! cancelled.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Streaming};

use crate::call::Executor;
use crate::error::CallError;
use crate::pb::dispatcher_server::Dispatcher;
use crate::pb::{
    DispatchFrame, ListToolsRequest, ListToolsResponse, ResultFrame, ToolCall, ToolResult,
};
use crate::server::drain::Drain;

/// A ResultFrame is flushed once its encoded results reach this size, keeping
/// frames well under the client's receive limit; a single larger result
/// travels alone.
const FRAME_BYTES: usize = 1 << 20;

/// In-flight bounds. Past either, a call is refused with OVERLOADED at once:
/// there is no queue to wait in.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub max_inflight: usize,
    pub max_inflight_per_stream: usize,
}

pub struct DispatchService {
    exec: Arc<Executor>,
    global: Arc<Semaphore>,
    per_stream: usize,
    drain: Drain,
}

impl DispatchService {
    pub fn new(exec: Arc<Executor>, admission: Admission, drain: Drain) -> Self {
        Self {
            exec,
            global: Arc::new(Semaphore::new(admission.max_inflight)),
            per_stream: admission.max_inflight_per_stream.max(1),
            drain,
        }
    }

    /// A permit for one call in flight in this process, or why there is none.
    fn admit(&self) -> Result<OwnedSemaphorePermit, CallError> {
        if self.drain.is_draining() {
            return Err(CallError::Draining);
        }
        self.global
            .clone()
            .try_acquire_owned()
            .map_err(|_| CallError::Overloaded("the sidecar is at its in-flight call limit"))
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
        if self.drain.is_draining() {
            return Err(tonic::Status::unavailable(
                "sidecar is draining; reconnect to another",
            ));
        }
        let (out_tx, out_rx) = mpsc::channel(4);
        let session = Session {
            exec: self.exec.clone(),
            global: self.global.clone(),
            per_stream: self.per_stream,
            drain: self.drain.clone(),
            token: self.drain.child_token(),
            inflight: HashMap::new(),
            ready: Vec::new(),
        };
        tokio::spawn(session.run(request.into_inner(), out_tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn invoke(
        &self,
        request: Request<ToolCall>,
    ) -> Result<Response<ToolResult>, tonic::Status> {
        let received = Instant::now();
        let transport_deadline = grpc_timeout(request.metadata()).map(|t| received + t);
        let call = request.into_inner();
        let result = match self.admit() {
            Err(e) => self.exec.reject(call, e, received),
            Ok(_permit) => {
                let _gauge = InflightGauge::new(&self.exec);
                // Dropping this future (client cancelled) drops the upstream
                // request; the token covers the drain timeout.
                let token = self.drain.child_token();
                self.exec
                    .execute(call, received, transport_deadline, &token)
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

/// One Dispatch stream.
struct Session {
    exec: Arc<Executor>,
    global: Arc<Semaphore>,
    per_stream: usize,
    drain: Drain,
    /// Parent of every call's token: cancelled when the client goes away.
    token: CancellationToken,
    inflight: HashMap<String, CancellationToken>,
    /// Results waiting to be sent.
    ready: Vec<ToolResult>,
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<DispatchFrame>,
        out: mpsc::Sender<Result<ResultFrame, tonic::Status>>,
    ) {
        let metrics = self.exec.metrics().clone();
        metrics.streams.inc();
        let (done_tx, mut done_rx) = mpsc::channel::<ToolResult>(self.per_stream);
        let mut inbound_open = true;
        let drain = self.drain.clone();
        loop {
            if !self.ready.is_empty() && !self.flush(&out).await {
                tracing::debug!("client stopped reading results; cancelling its calls");
                break;
            }
            let drained = self.drain.is_draining() && self.inflight.is_empty();
            if (!inbound_open || drained) && self.inflight.is_empty() {
                break;
            }
            tokio::select! {
                message = inbound.message(), if inbound_open => match message {
                    Ok(Some(frame)) => self.accept(frame, &done_tx),
                    Ok(None) => inbound_open = false,
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "client went away; cancelling its calls");
                        break;
                    }
                },
                Some(result) = done_rx.recv() => {
                    self.complete(result);
                    while self.ready.len() < 1024 {
                        let Ok(result) = done_rx.try_recv() else { break };
                        self.complete(result);
                    }
                }
                // Wakes the loop so an idle stream ends when draining starts.
                _ = drain.draining(), if !drain.is_draining() => {}
            }
        }
        // Client gone or stream finished: nothing left here may keep running.
        self.token.cancel();
        metrics.streams.dec();
    }

    /// Admits or refuses each call of `frame` and applies its cancellations.
    fn accept(&mut self, frame: DispatchFrame, done: &mpsc::Sender<ToolResult>) {
        for call in frame.calls {
            let received = Instant::now();
            let admitted = if call.call_id.is_empty() {
                Err(CallError::EmptyCallId)
            } else if self.inflight.contains_key(&call.call_id) {
                Err(CallError::DuplicateCallId(call.call_id.clone()))
            } else if self.drain.is_draining() {
                Err(CallError::Draining)
            } else if self.inflight.len() >= self.per_stream {
                Err(CallError::Overloaded(
                    "this stream is at its in-flight call limit",
                ))
            } else {
                self.global.clone().try_acquire_owned().map_err(|_| {
                    CallError::Overloaded("the sidecar is at its in-flight call limit")
                })
            };
            let permit = match admitted {
                Ok(permit) => permit,
                Err(e) => {
                    self.ready.push(self.exec.reject(call, e, received));
                    continue;
                }
            };
            let token = self.token.child_token();
            self.inflight.insert(call.call_id.clone(), token.clone());
            let exec = self.exec.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let gauge = InflightGauge::new(&exec);
                let result = exec.execute(call, received, None, &token).await;
                drop(gauge);
                drop(permit);
                // Fails only when the session is gone, i.e. the client is.
                let _ = done.send(result).await;
            });
        }
        for call_id in frame.cancel_call_ids {
            if let Some(token) = self.inflight.get(&call_id) {
                token.cancel();
            }
        }
    }

    fn complete(&mut self, result: ToolResult) {
        self.inflight.remove(&result.call_id);
        self.ready.push(result);
    }

    /// Sends the ready results in frames of about [`FRAME_BYTES`]. `false`
    /// when the client no longer reads.
    async fn flush(&mut self, out: &mpsc::Sender<Result<ResultFrame, tonic::Status>>) -> bool {
        let mut results = std::mem::take(&mut self.ready).into_iter().peekable();
        while results.peek().is_some() {
            let mut frame = ResultFrame::default();
            let mut size = 0;
            while let Some(next) = results.peek() {
                let len = next.encoded_len();
                if !frame.results.is_empty() && size + len > FRAME_BYTES {
                    break;
                }
                size += len;
                frame.results.extend(results.next());
            }
            if out.send(Ok(frame)).await.is_err() {
                return false;
            }
        }
        true
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
