//! Large results through shared memory on the frames socket (framing
//! version 2, specified beside `StreamEnd` in `proto/dispatch/v1`).
//!
//! Over the socket, a 100 KB result costs the brain (the process the GIL
//! binds) a kernel copy out of the socket, a copy out of its read buffer,
//! and the wake-ups of a writer and a reader taking turns on a full socket
//! buffer: 34–52 µs measured (`tests/bench/result_read_floor.py`). Through
//! a region both processes map, it costs the one copy into a `bytes`. The
//! sidecar writes each large body into the stream's region (`pwrite`, the
//! one copy the socket write also made) and sends only where it lies; the
//! client copies it out and releases the bytes in order.
//!
//! The region is a ring written in the order frames are sent, so one
//! counter from the client ("released through") frees everything before
//! it. Why not a library: the ring is twenty lines over two counters, and
//! the client side is Python's `mmap`. The sidecar never maps the region
//! (writes go through the file), so this module needs no `unsafe`, and a
//! client cannot make it fault by shrinking the file: the memfd is sealed
//! at its size.
//!
//! The pages the sidecar writes are charged to its memory, and a client
//! keeps them alive as long as it keeps the descriptor or the mapping, past
//! the end of its stream. So a region gives its pages back when its stream
//! ends ([`Region`]'s `Drop`): whatever a client still maps reads as zeros.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::pb::{SharedSpan, ToolResult};

/// Results shorter than this travel inline: below it the socket costs the
/// client less than a span's bookkeeping (the brain's `LARGE_RESULT`).
pub(crate) const MIN_SHARED_BYTES: usize = 16 * 1024;

/// Results of at most this many eighths of the region wait for room when it
/// is full ([`Region::waits_for`]); larger ones travel inline then. The
/// writer sends everything before a result that waits, so once a client
/// that follows the protocol has copied out all it was sent, it has
/// released all but less than an eighth (it releases in eighths: the
/// brain's `_RELEASE_EVERY`), and a span that would cross the end skips to
/// the start, wasting less than its own length: 1/8 + 2 × 3/8 < 1, room.
const MAX_WAITING_EIGHTHS: u64 = 3;

/// What the client has released, shared between the stream's writer (which
/// places spans) and its reader (which takes the client's release frames).
#[derive(Debug, Default)]
pub(crate) struct Released {
    /// Every byte before this offset is free again.
    through: AtomicU64,
    /// Every byte before this offset has been placed (and sent, or is about
    /// to be): a release may not go past it.
    placed: AtomicU64,
    /// Woken by every release, and when the releases stop being read: the
    /// writer may be waiting for room.
    room: tokio::sync::Notify,
    /// The reader reads no further: the stream is past its backlog bound and
    /// has read ahead all it may. A release the client sent behind the calls
    /// not yet read cannot arrive until the writer sends results, so waiting
    /// for room then only stalls the stream.
    unread: AtomicBool,
}

impl Released {
    /// Takes the client's "released through `offset`" (its kind 3 frame);
    /// returns how many bytes that freed.
    pub(crate) fn release(&self, offset: u64) -> Result<u64, String> {
        let placed = self.placed.load(Ordering::Acquire);
        if offset > placed {
            return Err(format!(
                "a release through byte {offset} of the shared region, past the {placed} placed"
            ));
        }
        let before = self.through.fetch_max(offset, Ordering::AcqRel);
        if offset < before {
            return Err(format!(
                "a release through byte {offset} of the shared region, behind the {before} \
                 already released"
            ));
        }
        self.room.notify_waiters();
        Ok(offset - before)
    }

    /// Whether the client's releases have stopped being read
    /// ([`Self::set_unread`]).
    pub(crate) fn unread(&self) -> bool {
        self.unread.load(Ordering::Acquire)
    }

    /// The reader stopped reading (true) or reads again (false); a writer
    /// waiting for room learns of the stop at once.
    pub(crate) fn set_unread(&self, unread: bool) {
        // Read first: the reader calls this for every frame, and a write each
        // time would bounce the line the writer's `placed` shares.
        if self.unread.load(Ordering::Acquire) == unread {
            return;
        }
        if self.unread.swap(unread, Ordering::AcqRel) != unread && unread {
            self.room.notify_waiters();
        }
    }

    /// Every byte before this offset is free again.
    pub(crate) fn through(&self) -> u64 {
        self.through.load(Ordering::Acquire)
    }

    /// Resolves at the next release after it is enabled (see
    /// [`tokio::sync::Notified::enable`]).
    pub(crate) fn next_release(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }
}

/// One stream's region, owned by the stream's writer.
#[derive(Debug)]
pub(crate) struct Region {
    file: File,
    size: u64,
    /// Also holds the bytes placed so far (spans, and the tails skipped
    /// before wrapping), which only this writer changes.
    released: Arc<Released>,
    /// A write failed (the memory cgroup refused a page, say): every result
    /// travels inline from then on.
    broken: bool,
}

/// Where a result went, for `sidecar_frames_shared_results_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    /// Too small to bother, or nothing to place.
    Small,
    /// Into the region.
    Shared,
    /// Large, but the region had no room (or is broken): inline.
    Inline,
}

impl Region {
    /// A fresh region of `size` bytes: an anonymous memfd, sized and sealed
    /// so that neither side can shrink or grow it.
    pub(crate) fn create(size: u64) -> io::Result<Self> {
        Ok(Self {
            file: memfd(size)?,
            size,
            released: Arc::default(),
            broken: false,
        })
    }

    /// The descriptor the client maps.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Shared with the stream's reader, which takes the client's releases.
    pub(crate) fn released(&self) -> Arc<Released> {
        self.released.clone()
    }

    /// Moves `result`'s body into the region when it is large and there is
    /// room, leaving `shared_result` in its place.
    pub(crate) fn place(&mut self, result: &mut ToolResult) -> Placed {
        let body = &result.result;
        if body.len() < MIN_SHARED_BYTES {
            return Placed::Small;
        }
        let Some(span) = self.reserve(body.len() as u64) else {
            return Placed::Inline;
        };
        let at = span.offset % self.size;
        // A blocking write on the runtime's thread, like the socket write it
        // replaces: tmpfs pages, no disk.
        if let Err(e) = self.file.write_all_at(body, at) {
            tracing::warn!(error = %e, "writing a result into the shared region failed; \
                                        this stream's results travel inline from now on");
            self.broken = true;
            return Placed::Inline;
        }
        self.released
            .placed
            .store(span.offset + span.length, Ordering::Release);
        result.result = Bytes::new();
        result.shared_result = Some(span);
        Placed::Shared
    }

    /// Whether `result` belongs in the region but finds it full: it is
    /// large, small enough to wait for room ([`MAX_WAITING_EIGHTHS`]), and the
    /// client has not yet released enough. Sent inline at once instead, a
    /// result would cost the client more (a socket read and a copy out of
    /// its buffer) exactly while it is behind, and the socket moves a 100 KB
    /// result a buffer's worth (about 200 KB) per round trip of wake-ups:
    /// under load, a client that one pause put behind fell further behind.
    pub(crate) fn waits_for(&self, result: &ToolResult) -> bool {
        let len = result.result.len() as u64;
        !self.broken
            && len >= MIN_SHARED_BYTES as u64
            && len.saturating_mul(8) <= self.size.saturating_mul(MAX_WAITING_EIGHTHS)
            && self.reserve(len).is_none()
    }

    /// Where `len` bytes would go: after what is placed, or at the region's
    /// start when they would cross its end. `None` when that overlaps bytes
    /// the client has not released.
    fn reserve(&self, len: u64) -> Option<SharedSpan> {
        if self.broken || len > self.size {
            return None;
        }
        let written = self.released.placed.load(Ordering::Relaxed);
        let at = written % self.size;
        let skip = if at + len > self.size {
            self.size - at
        } else {
            0
        };
        let offset = written + skip;
        let released = self.released.through.load(Ordering::Acquire);
        (offset + len - released <= self.size).then_some(SharedSpan {
            offset,
            length: len,
        })
    }
}

impl Drop for Region {
    /// Gives the pages back even while the client keeps the memfd: the seals
    /// forbid shrinking, not punching holes.
    fn drop(&mut self) {
        if let Err(e) = release_pages(&self.file, self.size) {
            tracing::warn!(error = %e, "could not free a shared result region's pages");
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn release_pages(file: &File, size: u64) -> io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    Ok(fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        0,
        size,
    )?)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn release_pages(_file: &File, _size: u64) -> io::Result<()> {
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn memfd(size: u64) -> io::Result<File> {
    use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};
    let fd = memfd_create(
        "tandem-results",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    ftruncate(&fd, size)?;
    fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(File::from(fd))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn memfd(_size: u64) -> io::Result<File> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "shared result memory needs memfd (Linux)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn large(byte: u8, len: usize) -> ToolResult {
        ToolResult {
            call_id: "c".into(),
            result: Bytes::from(vec![byte; len]),
            ..ToolResult::default()
        }
    }

    fn read(region: &Region, span: &SharedSpan) -> Vec<u8> {
        let mut out = vec![0; span.length as usize];
        region
            .file
            .read_exact_at(&mut out, span.offset % region.size)
            .unwrap();
        out
    }

    #[test]
    fn large_results_move_into_the_region_small_ones_stay() {
        let mut region = Region::create(64 * 1024).unwrap();
        let mut small = large(b's', MIN_SHARED_BYTES - 1);
        assert_eq!(region.place(&mut small), Placed::Small);
        assert_eq!(small.result.len(), MIN_SHARED_BYTES - 1);
        assert!(small.shared_result.is_none());

        let mut result = large(b'a', 20_000);
        assert_eq!(region.place(&mut result), Placed::Shared);
        assert!(result.result.is_empty());
        let span = result.shared_result.unwrap();
        assert_eq!((span.offset, span.length), (0, 20_000));
        assert_eq!(read(&region, &span), vec![b'a'; 20_000]);
    }

    #[test]
    fn a_full_region_sends_inline_until_released() {
        let mut region = Region::create(64 * 1024).unwrap();
        let released = region.released();
        let mut spans = Vec::new();
        for byte in [b'a', b'b', b'c'] {
            let mut result = large(byte, 20_000);
            assert_eq!(region.place(&mut result), Placed::Shared);
            spans.push(result.shared_result.unwrap());
        }
        // 60,000 of 65,536 bytes in use: the next would cross the end, and
        // wrapping to the start would overwrite 'a', which is not released.
        let mut d = large(b'd', 20_000);
        assert_eq!(region.place(&mut d), Placed::Inline);
        assert_eq!(d.result.len(), 20_000);
        assert!(d.shared_result.is_none());

        released.release(spans[0].offset + spans[0].length).unwrap();
        assert_eq!(region.place(&mut d), Placed::Shared);
        let span = d.shared_result.unwrap();
        // The tail after 'c' was skipped: the span starts at the region's
        // start, its offset counting the skipped bytes.
        assert_eq!(span.offset, 64 * 1024);
        assert_eq!(span.offset % region.size, 0);
        assert_eq!(read(&region, &span), vec![b'd'; 20_000]);
        // 'b' and 'c' are untouched.
        assert_eq!(read(&region, &spans[1]), vec![b'b'; 20_000]);
        assert_eq!(read(&region, &spans[2]), vec![b'c'; 20_000]);
    }

    #[test]
    fn wraps_around_for_ever() {
        let mut region = Region::create(100_000).unwrap();
        let released = region.released();
        for round in 0..50u8 {
            let mut result = large(round, 30_000 + usize::from(round) * 7);
            assert_eq!(region.place(&mut result), Placed::Shared, "round {round}");
            let span = result.shared_result.unwrap();
            assert!(span.offset % region.size + span.length <= region.size);
            assert_eq!(read(&region, &span), result_bytes(round, &span));
            released.release(span.offset + span.length).unwrap();
        }
    }

    fn result_bytes(round: u8, span: &SharedSpan) -> Vec<u8> {
        vec![round; span.length as usize]
    }

    #[test]
    fn larger_than_the_region_stays_inline() {
        let mut region = Region::create(32 * 1024).unwrap();
        let mut result = large(b'x', 40_000);
        assert_eq!(region.place(&mut result), Placed::Inline);
        assert_eq!(result.result.len(), 40_000);
    }

    #[tokio::test]
    async fn a_writer_waiting_for_room_learns_at_once_that_releases_stopped_being_read() {
        let released = Released::default();
        let woken = released.next_release();
        tokio::pin!(woken);
        woken.as_mut().enable();
        released.set_unread(false);
        assert!(futures_poll_pending(woken.as_mut()));
        released.set_unread(true);
        assert!(released.unread());
        tokio::time::timeout(std::time::Duration::from_secs(5), woken)
            .await
            .expect("the stop wakes the writer");
        released.set_unread(false);
        assert!(!released.unread());
    }

    /// Whether `future` is still pending after one poll.
    fn futures_poll_pending<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        future.poll(&mut cx).is_pending()
    }

    #[test]
    fn releases_may_not_go_past_what_was_placed_nor_back() {
        let mut region = Region::create(64 * 1024).unwrap();
        let released = region.released();
        let err = released.release(1).unwrap_err();
        assert!(err.contains("past the 0 placed"), "{err}");
        let mut result = large(b'a', 20_000);
        region.place(&mut result);
        released.release(20_000).unwrap();
        released.release(20_000).unwrap();
        let err = released.release(10).unwrap_err();
        assert!(err.contains("behind the 20000 already released"), "{err}");
    }

    #[test]
    fn a_dropped_region_gives_its_pages_back_while_the_client_keeps_it() {
        let mut region = Region::create(256 * 1024).unwrap();
        let mut result = large(b'a', 200_000);
        assert_eq!(region.place(&mut result), Placed::Shared);
        let client = region.file.try_clone().unwrap();
        let blocks =
            |file: &File| std::os::unix::fs::MetadataExt::blocks(&file.metadata().unwrap());
        assert!(blocks(&client) * 512 >= 200_000, "{}", blocks(&client));
        drop(region);
        assert_eq!(blocks(&client), 0);
        assert_eq!(client.metadata().unwrap().len(), 256 * 1024);
    }

    #[test]
    fn the_region_is_sealed_at_its_size() {
        let region = Region::create(64 * 1024).unwrap();
        assert_eq!(region.file.metadata().unwrap().len(), 64 * 1024);
        assert!(
            region.file.set_len(1024).is_err(),
            "shrinking must be refused"
        );
        assert!(
            region.file.set_len(1 << 20).is_err(),
            "growing must be refused"
        );
    }
}
