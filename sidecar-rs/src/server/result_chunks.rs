//! A result frame for the frames socket as the chunks it is written from,
//! so that no response body is copied on its way out: the length prefix,
//! kind byte and each result's protobuf fields are encoded into one small
//! buffer, and each result's `result` bytes (the `Bytes` the upstream's body
//! arrived in) follow as chunks of their own; the socket takes them all in
//! vectored writes. A frame carries up to its byte budget (1 MiB by
//! default) of bodies: encoding it whole copied every body once more and
//! allocated a buffer of that size per frame.
//!
//! The encoding is the frame [`super::frames`] specifies, byte for byte
//! the length and kind, then the `ResultFrame` message; within each
//! `ToolResult` the `result` field comes after the others, which protobuf
//! parsers accept (fields may come in any order).

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;

use crate::pb::{ResultFrame, ToolResult};

/// `ResultFrame.results` and `ToolResult.result` (proto/dispatch/v1).
const RESULTS_FIELD: u32 = 1;
const RESULT_FIELD: u32 = 3;

/// Bytes to write, as a queue of chunks. Why not a library: `bytes` joins
/// two buffers (`Chain`), not a list, and tokio's `write_all_buf` writes
/// any [`Buf`] vectored.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Chunks {
    fn push(&mut self, part: Bytes) {
        // No empty chunk: `chunk()` is then empty only at the end.
        if !part.is_empty() {
            self.remaining += part.len();
            self.parts.push_back(part);
        }
    }
}

impl Buf for Chunks {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |part| part)
    }

    fn advance(&mut self, mut count: usize) {
        assert!(count <= self.remaining, "advanced past the end");
        self.remaining -= count;
        while count > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if count < front.len() {
                front.advance(count);
                return;
            }
            count -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (slice, part) in slices.iter_mut().zip(&self.parts) {
            *slice = IoSlice::new(part);
            filled += 1;
        }
        filled
    }
}

/// `frame` framed as `kind` (the frames socket's 4-byte big-endian length
/// of kind + message, the kind byte, the message), its results' bodies
/// referenced, not copied. `None` when it does not fit a 4-byte length.
pub(crate) fn encode_results(kind: u8, frame: ResultFrame) -> Option<Chunks> {
    let mut results = frame.results;
    let bodies: Vec<Bytes> = results
        .iter_mut()
        .map(|result| std::mem::take(&mut result.result))
        .collect();
    let lengths: Vec<usize> = results
        .iter()
        .zip(&bodies)
        .map(|(result, body)| result.encoded_len() + body_field_len(body))
        .collect();
    let message_len: usize = lengths
        .iter()
        .map(|&len| key_len(RESULTS_FIELD) + encoded_len_varint(len as u64) + len)
        .sum();
    let header = u32::try_from(message_len + 1).ok()?;

    let mut head = BytesMut::with_capacity(5 + lengths.len() * 64);
    let mut chunks = Chunks::default();
    head.put_u32(header);
    head.put_u8(kind);
    for ((result, body), len) in results.iter().zip(bodies).zip(lengths) {
        encode_key(RESULTS_FIELD, WireType::LengthDelimited, &mut head);
        encode_varint(len as u64, &mut head);
        encode_fields(result, &mut head);
        if !body.is_empty() {
            encode_key(RESULT_FIELD, WireType::LengthDelimited, &mut head);
            encode_varint(body.len() as u64, &mut head);
            chunks.push(head.split().freeze());
            chunks.push(body);
        }
    }
    chunks.push(head.freeze());
    Some(chunks)
}

/// The encoded length of a non-empty `result` field (proto3 omits an
/// empty one).
fn body_field_len(body: &Bytes) -> usize {
    if body.is_empty() {
        0
    } else {
        key_len(RESULT_FIELD) + encoded_len_varint(body.len() as u64) + body.len()
    }
}

/// `result`'s fields (its body taken out), without a length prefix.
fn encode_fields(result: &ToolResult, head: &mut BytesMut) {
    // A `BytesMut` grows as needed: encoding into it cannot run out of room.
    let _ = result.encode(head);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{Status, Timing, Violation};

    fn collect(mut chunks: Chunks) -> Vec<u8> {
        let mut out = Vec::new();
        while chunks.has_remaining() {
            let chunk = chunks.chunk().to_vec();
            chunks.advance(chunk.len());
            out.extend(chunk);
        }
        out
    }

    fn frame() -> ResultFrame {
        ResultFrame {
            results: vec![
                ToolResult {
                    call_id: "a".into(),
                    status: Status::Ok.into(),
                    result: Bytes::from(vec![b'x'; 300]),
                    upstream_status: 200,
                    timing: Some(Timing {
                        total_us: 7,
                        ..Timing::default()
                    }),
                    ..ToolResult::default()
                },
                ToolResult {
                    call_id: "b".into(),
                    status: Status::InvalidResponse.into(),
                    violations: vec![Violation {
                        instance_path: "/x".into(),
                        ..Violation::default()
                    }],
                    ..ToolResult::default()
                },
                ToolResult {
                    call_id: "c".into(),
                    result: Bytes::from_static(b"{}"),
                    ..ToolResult::default()
                },
            ],
        }
    }

    #[test]
    fn the_chunks_are_the_frame_protobuf_encodes() {
        let frame = frame();
        let bytes = collect(encode_results(1, frame.clone()).expect("fits"));
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(bytes[4], 1);
        // The same message, and the same length as protobuf's own encoding
        // (the fields of a result are only reordered).
        assert_eq!(ResultFrame::decode(&bytes[5..]).unwrap(), frame);
        assert_eq!(bytes.len() - 5, frame.encode_to_vec().len());
        let empty = collect(encode_results(1, ResultFrame::default()).expect("fits"));
        assert_eq!(empty, [0, 0, 0, 1, 1]);
    }

    #[test]
    fn bodies_are_referenced_not_copied() {
        let frame = frame();
        let body = frame.results[0].result.clone();
        let chunks = encode_results(1, frame).expect("fits");
        assert!(chunks
            .parts
            .iter()
            .any(|part| part.as_ptr() == body.as_ptr() && part.len() == body.len()));
        let mut slices = [IoSlice::new(&[]); 16];
        let filled = chunks.chunks_vectored(&mut slices);
        assert_eq!(filled, chunks.parts.len());
        let vectored: usize = slices[..filled].iter().map(|s| s.len()).sum();
        assert_eq!(vectored, chunks.remaining());
    }

    #[test]
    fn advancing_crosses_chunks() {
        let mut chunks = Chunks::default();
        for part in [&b"ab"[..], b"", b"cde", b"f"] {
            chunks.push(Bytes::copy_from_slice(part));
        }
        assert_eq!(chunks.remaining(), 6);
        chunks.advance(3);
        assert_eq!(chunks.chunk(), b"de");
        chunks.advance(3);
        assert!(!chunks.has_remaining());
        assert_eq!(chunks.chunk(), b"");
    }
}
