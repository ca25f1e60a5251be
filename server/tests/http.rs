//! The server serves a real store over real HTTP on loopback.

use std::time::Duration;

use strata::{ExpectedVersion, NewEvent, Options, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[tokio::test]
async fn serves_events_of_the_default_store_as_seed_json() {
    let data = tempfile::tempdir().unwrap();
    {
        let store = Store::open(data.path().join("default"), Options::default()).unwrap();
        store
            .append(
                "counter-1",
                ExpectedVersion::NoStream,
                vec![NewEvent::new(
                    "CounterIncremented",
                    br#"{"value":1}"#.to_vec(),
                )],
            )
            .unwrap();
        store.close().unwrap();
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = strata_server::Config::new(
        data.path().to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
        None,
    );
    let server = tokio::spawn(strata_server::serve(
        config,
        move |bound: &strata_server::Bound| {
            let _ = tx.send(bound.http);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let addr = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    let (status, body) = get(addr, "/events?from=1").await;
    assert_eq!(status, 200, "{body}");
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(events[0]["aggregate_id"], "counter-1");
    assert_eq!(events[0]["event_data"]["value"], 1);
    assert_eq!(events[0]["version"], 1);
    let (status, _) = get(addr, "/events?limit=0").await;
    assert_eq!(status, 400);
    let (status, body) = get(addr, "/health?store=default").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"head\":1"), "{body}");
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_server_without_tokens_refuses_to_listen_beyond_loopback() {
    let data = tempfile::tempdir().unwrap();
    let config = strata_server::Config::new(
        data.path().to_path_buf(),
        "0.0.0.0:0".parse().unwrap(),
        None,
    );
    let err = strata_server::serve(config, |_| {}, async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--token"), "{err}");
}
