//! The proxy's own HTTP/1.1 client codec against a scripted upstream on a raw socket: every
//! way RFC 9112 frames a response body, interim responses, early answers, and when an
//! upstream connection may and may not carry another request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// An upstream that answers each request with canned bytes chosen by its path, and counts the
/// connections it accepted.
struct Scripted {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the scripted upstream sends for `path`, and whether it then closes the connection.
fn script(method: &str, path: &str) -> (Vec<u8>, bool) {
    let plain = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: t\r\n\r\n".to_vec(),
            false,
        ),
        "/until-close" => (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread until the upstream closes".to_vec(),
            true,
        ),
        "/head" if method == "HEAD" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec(),
            false,
        ),
        "/no-content" => (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false),
        "/continue" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal".to_vec(),
            false,
        ),
        "/http10" => (
            b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\n1.0!".to_vec(),
            false,
        ),
        "/close-after" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbye!".to_vec(),
            false,
        ),
        "/short" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this".to_vec(),
            true,
        ),
        "/bad-chunk" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            true,
        ),
        _ => (plain(path), false),
    }
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s));
            }
        });
        Scripted {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Serves requests on one connection: reads a head (and a `Content-Length` body, except on
/// `/early`, which answers at once and closes), writes the script.
async fn serve(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut words = head.split(' ');
        let method = words.next().unwrap_or("").to_owned();
        let path = words.next().unwrap_or("").to_owned();
        if path == "/early" {
            let _ = s
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope")
                .await;
            // Leave the body unread: close only once the proxy has taken the answer.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
        let length: usize = head
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < end + 4 + length {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + 4 + length);
        let (reply, close) = script(&method, &path);
        if s.write_all(&reply).await.is_err() || close {
            return;
        }
    }
}

async fn setup() -> (Scripted, Harness) {
    let upstream = Scripted::start().await;
    let yaml = catch_all(
        "scripted",
        "",
        &format!(r#"endpoints: [{{ address: "{}" }}]"#, upstream.addr),
    );
    (upstream, Harness::start(&yaml).await)
}

async fn fetch(h: &Harness, method: &str, path: &str) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(h.url(path))
        .header("host", "any")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&h1_client(), req).await
}

#[tokio::test]
async fn kept_alive_upstream_connections_carry_request_after_request() {
    let (up, h) = setup().await;
    for i in 0..5 {
        let r = fetch(&h, "GET", &format!("/ok{i}")).await;
        assert_eq!((r.status.as_u16(), r.text()), (200, format!("/ok{i}")));
    }
    assert_eq!(
        up.connections(),
        1,
        "one upstream connection served all five"
    );
}

#[tokio::test]
async fn a_chunked_response_is_decoded_and_the_connection_reused() {
    let (up, h) = setup().await;
    let r = fetch(&h, "GET", "/chunked").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "hello world".to_owned())
    );
    let r = fetch(&h, "GET", "/after").await;
    assert_eq!(r.text(), "/after");
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn a_response_read_until_close_is_complete_and_its_connection_not_reused() {
    let (up, h) = setup().await;
    let r = fetch(&h, "GET", "/until-close").await;
    assert_eq!(r.text(), "read until the upstream closes");
    let r = fetch(&h, "GET", "/after").await;
    assert_eq!(r.text(), "/after");
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn bodiless_responses_end_at_the_head_and_keep_the_connection() {
    let (up, h) = setup().await;
    let r = fetch(&h, "HEAD", "/head").await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(r.body.is_empty());
    assert_eq!(r.headers["content-length"], "1000", "HEAD keeps the length");
    let r = fetch(&h, "GET", "/no-content").await;
    assert_eq!(r.status.as_u16(), 204);
    let r = fetch(&h, "GET", "/after").await;
    assert_eq!(r.text(), "/after");
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn interim_responses_are_not_forwarded() {
    let (_up, h) = setup().await;
    let r = fetch(&h, "GET", "/continue").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "final".to_owned()));
    assert!(!r.headers.contains_key("link"));
}

#[tokio::test]
async fn close_and_http10_responses_are_not_followed_by_another_request() {
    let (up, h) = setup().await;
    assert_eq!(fetch(&h, "GET", "/close-after").await.text(), "bye!");
    assert_eq!(fetch(&h, "GET", "/http10").await.text(), "1.0!");
    assert_eq!(fetch(&h, "GET", "/after").await.text(), "/after");
    assert_eq!(up.connections(), 3, "a new connection after each");
}

#[tokio::test]
async fn an_early_answer_reaches_the_client_while_it_is_still_uploading() {
    let (up, h) = setup().await;
    let req = Request::post(h.url("/early"))
        .header("host", "any")
        .body(Full::new(Bytes::from(vec![b'x'; 4 << 20])))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), h1_client().request(req))
        .await
        .expect("an answer in time");
    // The client may see the answer, or (its upload cut off when the proxy closes) an error;
    // never a hang, and never a made-up status.
    if let Ok(resp) = resp {
        assert_eq!(resp.status().as_u16(), 413);
    }
    let series = format!(
        r#"gofe_upstream_requests_total{{cluster="scripted",code_class="4xx",endpoint="{}"}}"#,
        up.addr
    );
    assert_eq!(
        metric(&h.proxy.metrics_text(), &series),
        Some(1.0),
        "the proxy took the upstream's early 413"
    );
    assert_eq!(fetch(&h, "GET", "/after").await.text(), "/after");
}

#[tokio::test]
async fn broken_bodies_fail_that_response_only() {
    let (_up, h) = setup().await;
    for path in ["/short", "/bad-chunk"] {
        let resp = h1_client()
            .request(
                Request::get(h.url(path))
                    .header("host", "any")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
        // The head was forwarded before the body broke: the client sees the stream fail.
        if let Ok(resp) = resp {
            assert!(resp.into_body().collect().await.is_err(), "{path}");
        }
        assert_eq!(fetch(&h, "GET", "/after").await.text(), "/after", "{path}");
    }
}
