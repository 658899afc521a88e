//! HTTP/2 control-frame floods (Envoy's `max_outbound_control_frames`): a client that sends
//! 100,000 PING or SETTINGS frames without reading the answers has its connection closed;
//! other connections are served as before.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A frame header for `len` payload bytes on stream 0.
fn header(ty: u8, len: u32) -> [u8; 9] {
    let l = len.to_be_bytes();
    [l[1], l[2], l[3], ty, 0, 0, 0, 0, 0]
}

/// Sends the preface, an empty SETTINGS, then 100,000 copies of `frame`, never reading; says
/// whether the proxy closed the connection (the write failed, or a read then reached the end).
async fn flood_is_cut_off(addr: std::net::SocketAddr, frame: &[u8]) -> bool {
    let mut raw = PREFACE.to_vec();
    raw.extend_from_slice(&header(0x4, 0));
    for _ in 0..100_000 {
        raw.extend_from_slice(frame);
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(20), s.write_all(&raw)).await {
        Err(_) => return false, // still writing: the proxy stopped reading but kept it open
        Ok(Err(_)) => return true,
        Ok(Ok(())) => {}
    }
    // Everything was written: the proxy must still close it (the answers in between are read
    // here only to reach the end).
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut sink))
        .await
        .is_ok()
}

#[tokio::test]
async fn ping_and_settings_floods_are_closed_and_others_are_served() {
    let (b, vars) = backends(&["a"]).await;
    let config = fill(
        &catch_all("web", "", r#"endpoints: [{ address: "{B0}" }]"#),
        &vars,
    );
    let h = Harness::start(&config).await;
    let mut ping = header(0x6, 8).to_vec();
    ping.extend_from_slice(b"01234567");
    let settings = header(0x4, 0);

    // A well-behaved h2 client holds a connection open across the floods.
    let client = h2c_client();
    assert_eq!(get(&client, &h.url("/"), "any", &[]).await.status, 200);

    for (name, frame) in [("PING", &ping[..]), ("SETTINGS", &settings[..])] {
        assert!(
            flood_is_cut_off(h.addr, frame).await,
            "a {name} flood kept its connection"
        );
        let r = get(&client, &h.url("/"), "any", &[]).await;
        assert_eq!(r.status, 200, "the other connection after a {name} flood");
        let fresh = get(&h2c_client(), &h.url("/"), "any", &[]).await;
        assert_eq!(fresh.status, 200, "a new connection after a {name} flood");
    }
    assert_eq!(
        metric(
            &h.proxy.metrics_text(),
            r#"gofe_downstream_connections_flood_total{listener="127.0.0.1:0"}"#
        ),
        Some(2.0)
    );
    h.proxy.shutdown(Duration::ZERO).await;
    for x in b {
        x.stop().await;
    }
}
