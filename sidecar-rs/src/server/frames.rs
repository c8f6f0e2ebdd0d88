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
//!
//! A client that opens with version 2's preface gets a shared region for
//! large results ([`Region`]), passed to it with the answer.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use futures::StreamExt;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::pb::{DispatchFrame, ResultFrame, StreamEnd, ToolCall, ToolResult};
use crate::server::dispatch::{Claim, DispatchService, Inbound, Out, UNANSWERED};
use crate::server::drain::Drain;
use crate::server::linger::LINGER_MAX;
use crate::server::result_chunks::encode_results;
use crate::server::shared_region::{Placed, Region, Released};

/// What each side sends first: "tandem", then "F1" for framing version 1.
pub const PREFACE: &[u8; 8] = b"tandemF1";

/// Version 2's preface: version 1 plus a shared region for large results.
/// The sidecar answers it with this (and the region) or with [`PREFACE`].
pub const PREFACE_SHARED: &[u8; 8] = b"tandemF2";

/// How the frames socket serves its streams.
#[derive(Debug, Clone, Copy)]
pub struct FramesOptions {
    /// Largest frame the client may send.
    pub max_frame_bytes: usize,
    /// Size of each version 2 stream's shared result region; 0: none (such
    /// clients are answered with version 1).
    pub shared_region_bytes: u64,
    /// How long a large result waits for the client to release room in a
    /// full region before it goes inline.
    pub shared_room_wait: Duration,
    /// Regions at once, in the whole process: results placed in a region
    /// count as delivered, so each region is memory a client may leave
    /// full. Streams past it are answered with version 1.
    pub max_shared_regions: usize,
}

/// How long a new connection has to send its preface.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(5);

/// Frame kinds (the byte after the length). Client to sidecar: a
/// DispatchFrame, or "end of calls". Sidecar to client: a ResultFrame, or the
/// StreamEnd that closes the stream.
const KIND_MESSAGE: u8 = 1;
const KIND_END: u8 = 2;
/// Client to sidecar, version 2: "released through" an offset of the shared
/// region (8 bytes, big-endian).
const KIND_RELEASED: u8 = 3;

/// Serves framed Dispatch streams on `listener` until draining starts, then
/// waits for its connections' streams to end (each ends once its calls have
/// answered; the drain's abort cancels what is left). Dropping the returned
/// future drops every connection, which cancels their calls.
pub async fn serve(
    listener: UnixListener,
    service: Arc<DispatchService>,
    drain: Drain,
    options: FramesOptions,
) -> anyhow::Result<()> {
    let mut connections = JoinSet::new();
    let regions = Arc::new(Semaphore::new(options.max_shared_regions));
    loop {
        tokio::select! {
            () = drain.draining() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, service.clone(), options, regions.clone()));
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
async fn connection(
    mut stream: UnixStream,
    service: Arc<DispatchService>,
    options: FramesOptions,
    regions: Arc<Semaphore>,
) {
    let mut preface = [0u8; PREFACE.len()];
    match tokio::time::timeout(PREFACE_TIMEOUT, stream.read_exact(&mut preface)).await {
        Ok(Ok(_)) if &preface == PREFACE || &preface == PREFACE_SHARED => {}
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
    let region = if &preface == PREFACE_SHARED {
        shared_region(options.shared_region_bytes, &regions)
    } else {
        None
    };
    let answered = match &region {
        Some((region, _)) => send_with_fd(&mut stream, PREFACE_SHARED, region.fd()).await,
        None => stream.write_all(PREFACE).await,
    };
    if answered.is_err() {
        return;
    }
    let released = region.as_ref().map(|(region, _)| region.released());
    let (read, mut write) = stream.into_split();
    let gone = CancellationToken::new();
    let (give_back, read_back) = oneshot::channel();
    let inbound = FramedInbound {
        give_back: Some(give_back),
        frames: Some(FramedRead::new(
            read,
            LengthDelimitedCodec::builder()
                .length_field_length(4)
                .big_endian()
                .max_frame_length(options.max_frame_bytes)
                .new_codec(),
        )),
        max_frame_bytes: options.max_frame_bytes,
        gone: gone.clone(),
        released,
        released_bytes: service.metrics().frames_shared_released_bytes.clone(),
        stash: VecDeque::new(),
        stash_bytes: 0,
        stash_closed: false,
    };
    let writer = Writer {
        region,
        counted: SharedCounts::new(service.metrics()),
        room_wait: options.shared_room_wait,
        gave_up_at: None,
    };
    let ended = match service.open(inbound) {
        Ok(out) => writer.write_results(out, &mut write, gone).await,
        Err(status) => {
            write_end(&mut write, &status).await.is_ok() && write.shutdown().await.is_ok()
        }
    };
    if ended {
        linger(read_back, write).await;
    }
}

/// A region for a version 2 stream, with its place among the process's
/// regions, unless shared memory is off, every place is taken, or it cannot
/// be had here (then the stream is version 1's).
fn shared_region(bytes: u64, regions: &Arc<Semaphore>) -> Option<(Region, OwnedSemaphorePermit)> {
    if bytes == 0 {
        return None;
    }
    let Ok(place) = regions.clone().try_acquire_owned() else {
        tracing::warn!(
            "every shared result region is taken (--max-undelivered-bytes over \
             --frames-shared-region); this stream's results travel on the socket"
        );
        return None;
    };
    match Region::create(bytes) {
        Ok(region) => Some((region, place)),
        Err(e) => {
            tracing::warn!(error = %e, bytes, "could not make a shared result region; \
                           the stream's results travel on the socket");
            None
        }
    }
}

/// Sends `bytes` with `fd` attached (SCM_RIGHTS): the descriptor travels
/// with the first byte the socket takes, the rest follows plainly.
#[cfg(any(target_os = "linux", target_os = "android"))]
async fn send_with_fd(
    stream: &mut UnixStream,
    bytes: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let sent = stream
        .async_io(tokio::io::Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [fd];
            control.push(SendAncillaryMessage::ScmRights(&fds));
            let iov = [io::IoSlice::new(bytes)];
            Ok(sendmsg(&*stream, &iov, &mut control, SendFlags::NOSIGNAL)?)
        })
        .await?;
    stream.write_all(&bytes[sent..]).await
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
async fn send_with_fd(
    _stream: &mut UnixStream,
    _bytes: &[u8],
    _fd: std::os::fd::BorrowedFd<'_>,
) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "SCM_RIGHTS"))
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
    /// Version 2: where the client's releases of the shared region go.
    released: Option<Arc<Released>>,
    /// `sidecar_frames_shared_released_bytes_total`.
    released_bytes: prometheus::IntCounter,
    /// What [`Inbound::releases`] read past that is the session's (calls,
    /// end of calls, a failure), in order, for the next
    /// [`Inbound::message`]s: about [`STASH_BYTES`] of calls at most.
    stash: VecDeque<Result<Option<DispatchFrame>, tonic::Status>>,
    /// What the entries of `stash` hold ([`stashed_bytes`]).
    stash_bytes: usize,
    /// `stash` holds the end of calls or a failure: nothing follows.
    stash_closed: bool,
}

/// Calls a stream whose backlog is full may have read ahead, to reach the
/// releases its client sent after them (beyond it the socket is not read
/// until the backlog drains; a frame may take it past this once).
const STASH_BYTES: usize = 1 << 20;

/// What the client sent.
#[derive(Debug, PartialEq)]
enum Incoming {
    Calls(DispatchFrame),
    /// "End of calls".
    End,
    /// Version 2: the shared region is free through this offset.
    Released(u64),
}

impl FramedInbound {
    /// Reads frames, taking the client's releases as they come, until one
    /// for the session: calls, end of calls (`None`) or a failure.
    /// Cancel-safe, as the session's select needs: FramedRead keeps a partly
    /// read frame, and everything after `next` is synchronous.
    async fn next_for_session(&mut self) -> Result<Option<DispatchFrame>, tonic::Status> {
        let Some(frames) = self.frames.as_mut() else {
            return Ok(None);
        };
        loop {
            match frames.next().await {
                Some(Ok(frame)) => match decode(frame)? {
                    Incoming::Calls(calls) => return Ok(Some(calls)),
                    Incoming::End => return Ok(None),
                    // Taken here, so the session never sees them.
                    Incoming::Released(offset) => match &self.released {
                        Some(released) => {
                            let freed = released
                                .release(offset)
                                .map_err(tonic::Status::invalid_argument)?;
                            self.released_bytes.inc_by(freed);
                        }
                        None => {
                            return Err(tonic::Status::invalid_argument(
                                "a release frame (kind 3) on a stream without a shared region",
                            ))
                        }
                    },
                },
                Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(tonic::Status::out_of_range(format!(
                        "a frame too large: over the {} byte limit",
                        self.max_frame_bytes
                    )))
                }
                // Closed (or broken) without "end of calls": the client is gone.
                Some(Err(_)) | None => {
                    self.gone.cancel();
                    return std::future::pending().await;
                }
            }
        }
    }
}

impl Inbound for FramedInbound {
    async fn message(&mut self) -> Result<Option<DispatchFrame>, tonic::Status> {
        // The session reads calls again: the releases behind them follow.
        if let Some(released) = &self.released {
            released.set_unread(false);
        }
        match self.stash.pop_front() {
            Some(next) => {
                self.stash_bytes -= stashed_bytes(&next);
                next
            }
            None => self.next_for_session().await,
        }
    }

    async fn releases(&mut self) -> Infallible {
        while !self.stash_closed && self.stash_bytes < STASH_BYTES {
            let next = self.next_for_session().await;
            // Kept only once the read is complete: still cancel-safe.
            self.stash_closed = !matches!(next, Ok(Some(_)));
            self.stash_bytes += stashed_bytes(&next);
            self.stash.push_back(next);
        }
        // Read ahead all it may (or all there is: after the end of calls a
        // client sends no release): a release behind what is unread waits
        // for the backlog to drain, which the writer must not wait for.
        if let Some(released) = &self.released {
            released.set_unread(true);
        }
        std::future::pending().await
    }
}

/// What a stashed entry holds, as [`STASH_BYTES`] counts it: the entry
/// itself, and for calls their structs and their size on the wire (their
/// strings and bytes). The wire size alone let frames with nothing in them,
/// five bytes each on the socket, fill the stash without end.
fn stashed_bytes(next: &Result<Option<DispatchFrame>, tonic::Status>) -> usize {
    let entry = std::mem::size_of_val(next);
    match next {
        Ok(Some(frame)) => {
            entry
                + frame.encoded_len()
                + frame.calls.len() * std::mem::size_of::<ToolCall>()
                + frame.cancel_call_ids.len() * std::mem::size_of::<String>()
        }
        _ => entry,
    }
}

impl Drop for FramedInbound {
    fn drop(&mut self) {
        if let (Some(frames), Some(give_back)) = (self.frames.take(), self.give_back.take()) {
            let _ = give_back.send(frames.into_inner());
        }
    }
}

fn decode(mut frame: BytesMut) -> Result<Incoming, tonic::Status> {
    if frame.is_empty() {
        return Err(tonic::Status::invalid_argument(
            "an empty frame: every frame starts with its kind byte",
        ));
    }
    match frame.get_u8() {
        KIND_MESSAGE => DispatchFrame::decode(frame.freeze())
            .map(Incoming::Calls)
            .map_err(|e| {
                tonic::Status::invalid_argument(format!("a malformed DispatchFrame: {e}"))
            }),
        KIND_END if frame.is_empty() => Ok(Incoming::End),
        KIND_END => Err(tonic::Status::invalid_argument(
            "an end-of-calls frame (kind 2) carries no message",
        )),
        KIND_RELEASED if frame.len() == 8 => Ok(Incoming::Released(frame.get_u64())),
        KIND_RELEASED => Err(tonic::Status::invalid_argument(format!(
            "a release frame (kind 3) carries 8 bytes, not {}",
            frame.len()
        ))),
        kind => Err(tonic::Status::invalid_argument(format!(
            "unknown frame kind {kind} (1: DispatchFrame, 2: end of calls, 3: released)"
        ))),
    }
}

/// `sidecar_frames_shared_results_total`, resolved once per stream.
struct SharedCounts {
    shared: prometheus::IntCounter,
    full: prometheus::IntCounter,
}

impl SharedCounts {
    fn new(metrics: &Metrics) -> Self {
        let by = |outcome| metrics.frames_shared_results.with_label_values(&[outcome]);
        Self {
            shared: by("shared"),
            full: by("full"),
        }
    }
}

/// The stream's sending side.
struct Writer {
    /// Version 2's region, when the stream has one, and its place among the
    /// process's regions.
    region: Option<(Region, OwnedSemaphorePermit)>,
    counted: SharedCounts,
    /// How long a large result waits for room in a full region.
    room_wait: Duration,
    /// Where the client's releases stood when a wait for room ran out: until
    /// it releases more, results that find the region full go inline at once.
    gave_up_at: Option<u64>,
}

/// Waits until `result` has room in `region` (true), `wait` passes or the
/// client's releases are not being read (false), or the client is gone
/// (`None`). The wait (`--frames-shared-room-wait`) is longer than a pause of
/// the brain's (a garbage collection, the scheduler), and short enough that a
/// client that never releases pays it once ([`Writer::gave_up_at`]), not per
/// result. Past its backlog bound, once the stream has read ahead all it may
/// ([`Released::unread`]), a release can only come after results go out:
/// waiting then stalled a stream whose brain was merely behind for the whole
/// wait, again and again (8 cores, a brain at its limit: a third of the
/// calls/s it held just below).
async fn room_for(
    region: &Region,
    result: &ToolResult,
    wait: Duration,
    gone: &CancellationToken,
) -> Option<bool> {
    let released = region.released();
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        // Enabled before the check, so a release between the two wakes it.
        let release = released.next_release();
        tokio::pin!(release);
        release.as_mut().enable();
        if !region.waits_for(result) {
            return Some(true);
        }
        if released.unread() {
            return Some(false);
        }
        tokio::select! {
            biased;
            () = gone.cancelled() => return None,
            () = &mut release => {}
            () = &mut deadline => return Some(false),
        }
    }
}

impl Writer {
    /// Writes what the session sends until its end (then shuts the write side
    /// and returns true), or until the client is gone (false). Dropping `out` on
    /// return tells the session.
    async fn write_results(
        mut self,
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
                    match self.send_frame(frame, claims, write, &gone).await {
                        Sent::Done => continue,
                        Sent::Gone => return false,
                        Sent::Ended(ended) => return ended,
                    }
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
}

/// How writing a frame went.
enum Sent {
    Done,
    /// The client is gone.
    Gone,
    /// The stream was ended (with an error); whether that was written.
    Ended(bool),
}

impl Writer {
    /// Places the frame's large results in the region and writes it. A
    /// result that finds the region full waits for room (see
    /// [`Region::waits_for`]), after the results before it are sent as a
    /// frame of their own: the client can only release what it was sent.
    async fn send_frame(
        &mut self,
        mut frame: ResultFrame,
        mut claims: Vec<Claim>,
        write: &mut OwnedWriteHalf,
        gone: &CancellationToken,
    ) -> Sent {
        let Self {
            region,
            counted,
            room_wait,
            gave_up_at,
        } = self;
        let Some((region, _)) = region.as_mut() else {
            return write_frame(frame, claims, write, gone).await;
        };
        let mut i = 0;
        while i < frame.results.len() {
            if region.waits_for(&frame.results[i])
                && *gave_up_at != Some(region.released().through())
            {
                if i > 0 {
                    let rest = ResultFrame {
                        results: frame.results.split_off(i),
                    };
                    let rest_claims = claims.split_off(i);
                    let head = std::mem::replace(&mut frame, rest);
                    let head_claims = std::mem::replace(&mut claims, rest_claims);
                    match write_frame(head, head_claims, write, gone).await {
                        Sent::Done => i = 0,
                        other => return other,
                    }
                }
                match room_for(region, &frame.results[i], *room_wait, gone).await {
                    None => return Sent::Gone,
                    Some(true) => {}
                    Some(false) => *gave_up_at = Some(region.released().through()),
                }
            }
            match region.place(&mut frame.results[i]) {
                Placed::Shared => counted.shared.inc(),
                Placed::Inline => counted.full.inc(),
                Placed::Small => {}
            }
            i += 1;
        }
        write_frame(frame, claims, write, gone).await
    }
}

/// Writes a result frame; its claims are released once the socket took it.
async fn write_frame(
    frame: ResultFrame,
    claims: Vec<Claim>,
    write: &mut OwnedWriteHalf,
    gone: &CancellationToken,
) -> Sent {
    let results = frame.results.len();
    let Some(mut chunks) = encode_results(KIND_MESSAGE, frame) else {
        tracing::error!(
            results,
            "a result frame too large to frame; ending the stream"
        );
        let status = tonic::Status::internal("a result frame over 4 GiB");
        return Sent::Ended(write_end(write, &status).await.is_ok());
    };
    let written = tokio::select! {
        biased;
        () = gone.cancelled() => return Sent::Gone,
        written = write.write_all_buf(&mut chunks) => written,
    };
    // The results have left the sidecar: their slots and bytes are free once
    // the socket took them.
    drop(claims);
    if let Err(e) = written {
        tracing::debug!(error = %e, "writing to a frames client failed; it is gone");
        return Sent::Gone;
    }
    Sent::Done
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
        assert_eq!(frame, Incoming::Calls(message));
    }

    #[test]
    fn end_of_calls_is_the_half_close() {
        assert_eq!(decode(framed(KIND_END, b"")).unwrap(), Incoming::End);
        let err = decode(framed(KIND_END, b"x")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_release_carries_its_offset() {
        let frame = decode(framed(KIND_RELEASED, &300_000u64.to_be_bytes())).unwrap();
        assert_eq!(frame, Incoming::Released(300_000));
        let err = decode(framed(KIND_RELEASED, b"1234")).unwrap_err();
        assert!(
            err.message().contains("8 bytes, not 4"),
            "{}",
            err.message()
        );
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
