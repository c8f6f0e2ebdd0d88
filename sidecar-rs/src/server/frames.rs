//! The framed transport: the Dispatch stream on a unix socket without gRPC
//! (`--listen frames:/path/to.sock`). The wire format is specified beside
//! `StreamEnd` in `proto/dispatch/v1/dispatch.proto`; in short, a preface,
//! then length-prefixed frames, each a kind byte and a protobuf message.
//!
//! It exists for the brain: grpc.aio costs the Python process about 100 µs
//! per frame it writes or reads, a raw socket about 6
//! (`tests/bench/transport_floor.py`), and the brain is the process the GIL
//! binds. The sidecar side is cheap either way. Framing is tokio-util's
//! `LengthDelimitedCodec`; the protocol around it is ours, so no library
//! speaks it.
//!
//! Each connection is one Dispatch session ([`DispatchService::open`]) with
//! exactly the gRPC stream's semantics and bounds: the session reads frames
//! through [`FramedInbound`], and [`write_results`] drains what the session
//! sends onto the socket. A client that closes without saying it has
//! finished ("end of calls") went away: its calls are cancelled.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use futures::StreamExt;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::pb::{DispatchFrame, StreamEnd};
use crate::server::dispatch::{DispatchService, Inbound, Out, UNANSWERED};
use crate::server::drain::Drain;
use crate::server::linger::LINGER_MAX;
use crate::server::result_chunks::encode_results;

/// What each side sends first: "tandem", then "F1" for framing version 1.
pub const PREFACE: &[u8; 8] = b"tandemF1";

/// How long a new connection has to send its preface.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(5);

/// Frame kinds (the byte after the length). Client to sidecar: a
/// DispatchFrame, or "end of calls". Sidecar to client: a ResultFrame, or the
/// StreamEnd that closes the stream.
const KIND_MESSAGE: u8 = 1;
const KIND_END: u8 = 2;

/// Serves framed Dispatch streams on `listener` until draining starts, then
/// waits for its connections' streams to end (each ends once its calls have
/// answered; the drain's abort cancels what is left). Dropping the returned
/// future drops every connection, which cancels their calls.
pub async fn serve(
    listener: UnixListener,
    service: Arc<DispatchService>,
    drain: Drain,
    max_frame_bytes: usize,
) -> anyhow::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = drain.draining() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, service.clone(), max_frame_bytes));
                }
                Err(e) => {
                    // Out of file descriptors, typically: wait instead of
                    // spinning on a listener that fails at once.
                    tracing::warn!(error = %e, "accepting a frames connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One framed connection: the prefaces, then one Dispatch session.
async fn connection(stream: UnixStream, service: Arc<DispatchService>, max_frame_bytes: usize) {
    let (mut read, mut write) = stream.into_split();
    let mut preface = [0u8; PREFACE.len()];
    match tokio::time::timeout(PREFACE_TIMEOUT, read.read_exact(&mut preface)).await {
        Ok(Ok(_)) if &preface == PREFACE => {}
        Ok(Ok(_)) => {
            tracing::warn!(
                preface = %String::from_utf8_lossy(&preface).escape_debug(),
                "closed a frames connection that did not open with the tandem preface \
                 (a gRPC client pointed at the frames socket?)"
            );
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "a frames connection closed before its preface");
            return;
        }
        Err(_) => {
            tracing::warn!(timeout = ?PREFACE_TIMEOUT, "closed a frames connection that sent no preface");
            return;
        }
    }
    if write.write_all(PREFACE).await.is_err() {
        return;
    }
    let gone = CancellationToken::new();
    let (give_back, read_back) = oneshot::channel();
    let inbound = FramedInbound {
        give_back: Some(give_back),
        frames: Some(FramedRead::new(
            read,
            LengthDelimitedCodec::builder()
                .length_field_length(4)
                .big_endian()
                .max_frame_length(max_frame_bytes)
                .new_codec(),
        )),
        max_frame_bytes,
        gone: gone.clone(),
    };
    let ended = match service.open(inbound) {
        Ok(out) => write_results(out, &mut write, gone).await,
        Err(status) => {
            write_end(&mut write, &status).await.is_ok() && write.shutdown().await.is_ok()
        }
    };
    if ended {
        linger(read_back, write).await;
    }
}

/// Closes a connection whose stream ended the way nginx closes one ("lingering
/// close", as [`crate::server::linger`] does for gRPC): the write side is
/// already shut, and what the client still sends is read and dropped until it
/// closes, or [`LINGER_MAX`] passes. Closing with unread input would make the
/// kernel fail the client's next write, and a client that then fails its
/// connection (asyncio does) loses the last results still unread in its socket.
async fn linger(read_back: oneshot::Receiver<OwnedReadHalf>, write: OwnedWriteHalf) {
    let _ = tokio::time::timeout(LINGER_MAX, async move {
        // The session gives the read side back as it ends, right after the end.
        let Ok(mut read) = read_back.await else {
            return;
        };
        let mut sink = [0u8; 4096];
        while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
        drop(write);
    })
    .await;
}

/// The client's frames, for the session.
struct FramedInbound {
    /// `None` only once dropped.
    frames: Option<FramedRead<OwnedReadHalf, LengthDelimitedCodec>>,
    /// Where the read side goes when the session ends, for [`linger`].
    give_back: Option<oneshot::Sender<OwnedReadHalf>>,
    max_frame_bytes: usize,
    /// Cancelled when the client went away; the writer then drops the
    /// session's receiver, which is how a session learns it.
    gone: CancellationToken,
}

impl Inbound for FramedInbound {
    async fn message(&mut self) -> Result<Option<DispatchFrame>, tonic::Status> {
        // Cancel-safe, as the session's select needs: FramedRead keeps a
        // partly read frame, and everything after `next` is synchronous.
        let Some(frames) = self.frames.as_mut() else {
            return Ok(None);
        };
        match frames.next().await {
            Some(Ok(frame)) => decode(frame),
            Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                Err(tonic::Status::out_of_range(format!(
                    "a frame too large: over the {} byte limit",
                    self.max_frame_bytes
                )))
            }
            // Closed (or broken) without "end of calls": the client is gone.
            Some(Err(_)) | None => {
                self.gone.cancel();
                std::future::pending().await
            }
        }
    }
}

impl Drop for FramedInbound {
    fn drop(&mut self) {
        if let (Some(frames), Some(give_back)) = (self.frames.take(), self.give_back.take()) {
            let _ = give_back.send(frames.into_inner());
        }
    }
}

fn decode(mut frame: BytesMut) -> Result<Option<DispatchFrame>, tonic::Status> {
    if frame.is_empty() {
        return Err(tonic::Status::invalid_argument(
            "an empty frame: every frame starts with its kind byte",
        ));
    }
    match frame.get_u8() {
        KIND_MESSAGE => DispatchFrame::decode(frame.freeze())
            .map(Some)
            .map_err(|e| {
                tonic::Status::invalid_argument(format!("a malformed DispatchFrame: {e}"))
            }),
        KIND_END if frame.is_empty() => Ok(None),
        KIND_END => Err(tonic::Status::invalid_argument(
            "an end-of-calls frame (kind 2) carries no message",
        )),
        kind => Err(tonic::Status::invalid_argument(format!(
            "unknown frame kind {kind} (1: DispatchFrame, 2: end of calls)"
        ))),
    }
}

/// Writes what the session sends until its end (then shuts the write side
/// and returns true), or until the client is gone (false). Dropping `out` on
/// return tells the session.
async fn write_results(
    mut out: mpsc::Receiver<Out>,
    write: &mut OwnedWriteHalf,
    gone: CancellationToken,
) -> bool {
    loop {
        let next = tokio::select! {
            biased;
            () = gone.cancelled() => return false,
            next = out.recv() => next,
        };
        let status = match next {
            Some(Out::Frame(frame, claims)) => {
                let results = frame.results.len();
                let Some(mut chunks) = encode_results(KIND_MESSAGE, frame) else {
                    tracing::error!(
                        results,
                        "a result frame too large to frame; ending the stream"
                    );
                    let status = tonic::Status::internal("a result frame over 4 GiB");
                    return write_end(write, &status).await.is_ok();
                };
                let written = tokio::select! {
                    biased;
                    () = gone.cancelled() => return false,
                    written = write.write_all_buf(&mut chunks) => written,
                };
                // The results have left the sidecar: their slots and bytes
                // are free once the socket took them.
                drop(claims);
                if let Err(e) = written {
                    tracing::debug!(error = %e, "writing to a frames client failed; it is gone");
                    return false;
                }
                continue;
            }
            Some(Out::End(status)) => status.unwrap_or_else(|| tonic::Status::ok("")),
            None => tonic::Status::internal(UNANSWERED),
        };
        if write_end(write, &status).await.is_err() {
            return false;
        }
        let _ = write.shutdown().await;
        return true;
    }
}

/// The StreamEnd frame for `status`.
async fn write_end(write: &mut OwnedWriteHalf, status: &tonic::Status) -> io::Result<()> {
    let end = StreamEnd {
        code: u32::try_from(i32::from(status.code())).unwrap_or(2),
        message: status.message().to_owned(),
    };
    match encode(KIND_END, &end) {
        Some(bytes) => write.write_all(&bytes).await,
        None => Ok(()),
    }
}

/// `message` framed: its length (with the kind byte), the kind, the message.
/// `None` when it does not fit a 4-byte length. (Result frames are framed
/// by `result_chunks`, which leaves the bodies where they are.)
fn encode(kind: u8, message: &impl Message) -> Option<BytesMut> {
    let len = message.encoded_len() + 1;
    let header = u32::try_from(len).ok()?;
    let mut bytes = BytesMut::with_capacity(4 + len);
    bytes.put_u32(header);
    bytes.put_u8(kind);
    message.encode(&mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::ToolCall;

    fn framed(kind: u8, payload: &[u8]) -> BytesMut {
        let mut frame = BytesMut::new();
        frame.put_u8(kind);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn decodes_a_dispatch_frame() {
        let message = DispatchFrame {
            calls: vec![ToolCall {
                call_id: "1".into(),
                tool: "echo".into(),
                arguments: bytes::Bytes::from_static(b"{}"),
                ..ToolCall::default()
            }],
            cancel_call_ids: vec!["7".into()],
        };
        let frame = decode(framed(KIND_MESSAGE, &message.encode_to_vec())).unwrap();
        assert_eq!(frame, Some(message));
    }

    #[test]
    fn end_of_calls_is_the_half_close() {
        assert_eq!(decode(framed(KIND_END, b"")).unwrap(), None);
        let err = decode(framed(KIND_END, b"x")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let empty = decode(BytesMut::new()).unwrap_err();
        assert!(empty.message().contains("kind byte"), "{}", empty.message());
        let unknown = decode(framed(9, b"")).unwrap_err();
        assert!(unknown.message().contains("unknown frame kind 9"));
        let garbage = decode(framed(KIND_MESSAGE, b"\xff\xff\xff")).unwrap_err();
        assert!(garbage.message().contains("malformed DispatchFrame"));
    }

    #[test]
    fn frames_carry_length_kind_and_message() {
        let end = StreamEnd {
            code: 14,
            message: "draining".into(),
        };
        let bytes = encode(KIND_END, &end).unwrap();
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(bytes[4], KIND_END);
        assert_eq!(StreamEnd::decode(&bytes[5..]).unwrap(), end);
    }
}
