//! The server started in-process on a unix socket, a real HTTP upstream on
//! loopback, and a tonic client: one Dispatch stream, exactly one result per
//! call, cancellation reaching the upstream, and a clean stop through the
//! shutdown future.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sidecar::pb::dispatcher_client::DispatcherClient;
use sidecar::pb::{DispatchFrame, Status, ToolCall};
use sidecar::server::dispatch::Admission;
use sidecar::upstream::http::UpstreamOptions;
use sidecar::{ListenAddr, ServerConfig};
use tokio::net::{TcpListener, UnixStream};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

/// Counts slow requests whose connection went away before they answered.
struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// `/fast` answers at once; `/slow` never does (until its client leaves).
async fn upstream(dropped: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let dropped = dropped.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let dropped = dropped.clone();
                    async move {
                        if req.uri().path() == "/slow" {
                            let _guard = Dropped(dropped);
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            std::mem::forget(_guard);
                        }
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"{\"ok\":true}",
                        ))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

async fn connect(socket: &Path) -> DispatcherClient<Channel> {
    let socket = socket.to_owned();
    for _ in 0..100 {
        let path = socket.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        });
        if let Ok(channel) = Endpoint::from_static("http://sidecar")
            .connect_with_connector(connector)
            .await
        {
            return DispatcherClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sidecar did not come up");
}

fn call(id: &str, tool: &str) -> ToolCall {
    ToolCall {
        call_id: id.into(),
        agent_id: "agent-1".into(),
        tool: tool.into(),
        arguments: Bytes::from_static(b"{}"),
        timeout_ms: 10_000,
        ..Default::default()
    }
}

#[tokio::test]
async fn one_stream_one_result_per_call_and_cancellation_reaches_the_upstream() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let base = upstream(dropped.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tools.yaml");
    std::fs::write(
        &config,
        format!(
            "tools:\n\
             - {{name: fast, input_schema: {{type: object}}, request: {{url: '{base}/fast'}}, egress: {{allow: [127.0.0.0/8]}}}}\n\
             - {{name: slow, input_schema: {{type: object}}, request: {{url: '{base}/slow'}}, egress: {{allow: [127.0.0.0/8]}}}}\n"
        ),
    )
    .unwrap();
    let socket = dir.path().join("sidecar.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sidecar::run(
        ServerConfig {
            config_path: config,
            listen: vec![ListenAddr::Unix(socket.clone())],
            health_listen: None,
            metrics_listen: None,
            auth: None,
            allow_unauthenticated_tcp: false,
            max_tcp_connections: 1024,
            max_tcp_connections_per_peer: 256,
            reload_interval: Duration::from_secs(60),
            tracing: false,
            redis_url: None,
            admission: Admission {
                max_inflight: 100,
                max_inflight_per_stream: 100,
                max_undelivered_bytes: 64 << 20,
                max_undelivered_bytes_per_stream: 16 << 20,
            },
            drain_timeout: Duration::from_secs(5),
            frames_shared_region_bytes: 0,
            frames_shared_room_wait: Duration::from_millis(200),
            upstream: UpstreamOptions::default(),
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let mut client = connect(&socket).await;

    let (frames, outbound) = tokio::sync::mpsc::channel(4);
    let mut results = client
        .dispatch(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await
        .unwrap()
        .into_inner();
    frames
        .send(DispatchFrame {
            calls: vec![call("a", "fast"), call("b", "nope"), call("c", "slow")],
            cancel_call_ids: vec![],
        })
        .await
        .unwrap();

    let mut seen = std::collections::HashMap::new();
    while seen.len() < 2 {
        for r in results.next().await.unwrap().unwrap().results {
            assert!(
                seen.insert(r.call_id.clone(), r.status).is_none(),
                "two results for {}",
                r.call_id
            );
        }
    }
    assert_eq!(seen["a"], Status::Ok as i32);
    assert_eq!(seen["b"], Status::UnknownTool as i32);

    frames
        .send(DispatchFrame {
            calls: vec![],
            cancel_call_ids: vec!["c".into(), "never-sent".into()],
        })
        .await
        .unwrap();
    drop(frames); // half-close: the stream ends once "c" has its result
    while let Some(frame) = results.next().await {
        for r in frame.unwrap().results {
            assert!(
                seen.insert(r.call_id.clone(), r.status).is_none(),
                "two results for {}",
                r.call_id
            );
        }
    }
    assert_eq!(seen.len(), 3);
    assert_eq!(seen["c"], Status::Cancelled as i32);
    for _ in 0..100 {
        if dropped.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the upstream request was not dropped"
    );

    drop(client);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    assert!(!socket.exists(), "the socket file is removed on exit");
}
