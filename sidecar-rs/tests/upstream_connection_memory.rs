//! What an HTTP/1.1 upstream connection allocates, counted by dhat's
//! allocator: the vendored hyper's patches (vendor/README.md) keep holding,
//! so an upgrade that loses them fails here rather than in the next
//! benchmark. Bytes allocated, not time: the counts do not move with the
//! machine's load.
//!
//! The origin runs on a plain thread with blocking std sockets and buffers
//! made before the measured part, so the counts are the client's.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sidecar::config::spec::{AllowEntry, HttpVersion};
use sidecar::upstream::egress::EgressPolicy;
use sidecar::upstream::http::{http_client, tls_config, HttpClient, UpstreamOptions};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// dhat allows one profiler at a time; the tests take turns.
static PROFILER: Mutex<()> = Mutex::new(());

fn client() -> HttpClient {
    let policy = EgressPolicy::parse(&[AllowEntry::Text("127.0.0.1".into())]).unwrap();
    http_client(
        &UpstreamOptions::default(),
        tls_config().unwrap(),
        &policy,
        None,
        HttpVersion::Http1,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Reads one request head from `socket`.
fn read_request(socket: &mut std::net::TcpStream, buf: &mut [u8]) {
    let mut seen = 0;
    loop {
        let n = socket.read(&mut buf[seen..]).unwrap();
        assert!(n > 0, "the client closed before its request");
        seen += n;
        if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
    }
}

fn request(port: u16) -> http::Request<Full<Bytes>> {
    let mut request = http::Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = format!("http://127.0.0.1:{port}/").parse().unwrap();
    request
}

const PIECES: usize = 24;
const PIECE: usize = 256;

/// A body that trickles in small pieces, every chunk kept until the body is
/// whole (as `read_body` keeps them): the reads go into the buffer the
/// chunks hold while it has room. Unpatched hyper allocated a new read
/// buffer of 8 KiB for every read while the earlier chunks held the last
/// one: 24 pieces, ~190 KiB.
#[test]
fn a_slow_body_is_read_into_the_buffer_its_chunks_hold() {
    let _turn = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
        PIECES * PIECE
    );
    let piece = vec![b'x'; PIECE];
    let origin = thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        let (mut socket, _) = listener.accept().unwrap();
        read_request(&mut socket, &mut buf);
        socket.write_all(head.as_bytes()).unwrap();
        for _ in 0..PIECES {
            thread::sleep(Duration::from_millis(5));
            socket.write_all(&piece).unwrap();
        }
        socket
    });
    let rt = runtime();
    let client = client();
    let profiler = dhat::Profiler::builder().testing().build();
    let (allocated, kept) = rt.block_on(async {
        let response = client.request(request(port)).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut kept: Vec<Bytes> = Vec::with_capacity(PIECES + 1);
        let before = dhat::HeapStats::get().total_bytes;
        while let Some(frame) = body.frame().await {
            kept.push(frame.unwrap().into_data().unwrap());
        }
        (dhat::HeapStats::get().total_bytes - before, kept)
    });
    drop(profiler);
    assert_eq!(kept.iter().map(Bytes::len).sum::<usize>(), PIECES * PIECE);
    assert!(
        kept.len() > PIECES / 2,
        "the body came in {} reads: the pieces were not read one by one",
        kept.len()
    );
    // The patched reads fill the held 8 KiB buffer first (6 KiB of body
    // here), then at most one more buffer. Measured (debug build,
    // 2026-12-06): 1,068 B patched, 198,636 B unpatched.
    assert!(
        allocated < 16 * 1024,
        "reading a {} B body in {} chunks allocated {allocated} B",
        PIECES * PIECE,
        kept.len()
    );
    drop(origin.join().unwrap());
}

const CONNECTIONS: usize = 32;

/// Connections with a request on each, waiting for the answer: what each
/// holds. Unpatched hyper allocated, per connection, a 9 KiB block for its
/// request channel and an 8 KiB buffer for request heads before anything
/// was sent, beside the 8 KiB read buffer: ~26 KiB with the connection's
/// task and the request's futures.
#[test]
fn a_connection_waiting_for_its_answer_holds_no_channel_block_or_head_buffer() {
    let _turn = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (all_in, wait_for_all) = std::sync::mpsc::channel::<()>();
    let (done, release) = std::sync::mpsc::channel::<()>();
    let origin = thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        let mut sockets = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let (mut socket, _) = listener.accept().unwrap();
            read_request(&mut socket, &mut buf);
            sockets.push(socket);
        }
        all_in.send(()).unwrap();
        release.recv().unwrap();
        sockets
    });
    let rt = runtime();
    let client = client();
    let profiler = dhat::Profiler::builder().testing().build();
    let held = rt.block_on(async {
        let before = dhat::HeapStats::get().curr_bytes;
        let calls: Vec<_> = (0..CONNECTIONS)
            .map(|_| tokio::spawn(client.request(request(port))))
            .collect();
        // Every request written and read by the origin; the connections are
        // waiting for answers that do not come.
        while wait_for_all.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let held = dhat::HeapStats::get().curr_bytes - before;
        for call in calls {
            call.abort();
        }
        held
    });
    drop(profiler);
    done.send(()).unwrap();
    drop(origin.join().unwrap());
    let per_connection = held / CONNECTIONS;
    // Measured (debug build, whose futures are larger than release's,
    // 2026-12-06): 16,226 B patched (the 8 KiB read buffer, the connection's
    // task, the request's futures), 33,086 B unpatched.
    assert!(
        per_connection < 24 * 1024,
        "each connection waiting for its answer holds {per_connection} B"
    );
}
