//! The client against a tiny scripted HTTP server on 127.0.0.1 (a real socket): every error
//! kind, every success shape, TLS and connection pooling.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

// === the scripted server ===

/// What the server does with every request.
#[derive(Clone)]
enum Reply {
    /// Answers with this status and body (keep-alive).
    Answer(u16, String),
    /// Reads the request and never answers.
    Hang,
    /// Reads the request, then closes the connection.
    Close,
    /// Promises a 1000-byte body, sends 10 bytes, closes.
    Truncated,
}

/// One request as the server read it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    content_type: Option<String>,
    body: String,
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Plain HTTP.
    async fn start(reply: Reply) -> Server {
        Server::start_with(reply, None).await
    }

    /// HTTPS when `tls` is given.
    async fn start_with(reply: Reply, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (reply, seen, tls) = (reply.clone(), s.clone(), tls.clone());
                conns.spawn(async move {
                    match tls {
                        None => connection(tcp, reply, seen).await,
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                connection(stream, reply, seen).await;
                            }
                        }
                    }
                });
            }
        });
        Server {
            addr,
            seen,
            connections,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves requests on one connection until the client closes it.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    reply: Reply,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut io, &mut buf).await else {
            return;
        };
        seen.lock().unwrap().push(request);
        match &reply {
            Reply::Answer(status, body) => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                if io.write_all(head.as_bytes()).await.is_err()
                    || io.write_all(body.as_bytes()).await.is_err()
                {
                    return;
                }
            }
            Reply::Hang => std::future::pending::<()>().await,
            Reply::Close => return,
            Reply::Truncated => {
                let _ = io
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{\"status\":")
                    .await;
                return;
            }
        }
    }
}

/// Reads one request (head and `content-length` body); `None` at the end of the stream.
async fn read_request<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Option<Seen> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0; 4096];
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length").map_or(0, |l| l.parse().unwrap());
    while buf.len() < head_end + length {
        let mut chunk = [0; 4096];
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    let content_type = header("content-type");
    buf.drain(..head_end + length);
    Some(Seen {
        method,
        path,
        content_type,
        body,
    })
}

fn success(data: &str) -> Reply {
    Reply::Answer(200, format!(r#"{{"status":"success","data":{data}}}"#))
}

fn client(url: &str) -> Client {
    Client::new(&ClientConfig {
        timeout: Duration::from_secs(10),
        ..ClientConfig::new(url)
    })
    .unwrap()
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gofe-prom-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether some source of `e` is an I/O error of `kind`.
fn has_io_kind(e: &(dyn std::error::Error + 'static), kind: io::ErrorKind) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        next = e.source();
    }
    false
}

// === building ===

#[test]
fn urls_are_checked_when_the_client_is_built() {
    let problem = |url: &str| match Client::new(&ClientConfig::new(url)) {
        Err(BuildError::InvalidUrl(e)) => {
            assert_eq!(e.url, url);
            assert!(e.to_string().starts_with("invalid prometheus url"), "{e}");
            e.problem
        }
        Err(e) => panic!("{url}: {e:?}"),
        Ok(_) => panic!("{url}: accepted"),
    };
    assert_eq!(problem("prometheus:9090"), UrlProblem::NoScheme);
    assert_eq!(problem("127.0.0.1:9090"), UrlProblem::NoScheme);
    assert_eq!(problem("localhost:9090/prom"), UrlProblem::NoScheme);
    assert_eq!(problem(""), UrlProblem::NoScheme);
    assert_eq!(
        problem("ftp://p:9090"),
        UrlProblem::UnsupportedScheme("ftp".into())
    );
    assert_eq!(problem("http://a b:9090"), UrlProblem::Unparsable);
    assert_eq!(
        problem("http://u:p@prometheus:9090"),
        UrlProblem::Credentials
    );
    assert_eq!(problem("http://prometheus:9090/?x=1"), UrlProblem::Query);
    // The parser's error is kept as the source.
    let Err(BuildError::InvalidUrl(e)) = Client::new(&ClientConfig::new("http://a b")) else {
        panic!("accepted")
    };
    assert!(std::error::Error::source(&e).is_some());

    for ok in [
        "http://127.0.0.1:9090",
        "http://prometheus",
        "HTTP://prometheus:9090/",
        "http://thanos:9090/prefix/",
        "http://[::1]:9090",
    ] {
        assert!(validate_url(ok).is_ok(), "{ok}");
        assert!(Client::new(&ClientConfig::new(ok)).is_ok(), "{ok}");
    }
    assert_eq!(
        validate_url("prometheus:9090").unwrap_err().problem,
        UrlProblem::NoScheme
    );
}

#[test]
fn https_needs_a_usable_ca_file() {
    let e = Client::new(&ClientConfig::new("https://p:9090")).unwrap_err();
    assert!(matches!(e, BuildError::MissingCa { .. }), "{e:?}");
    assert_eq!(e.metric_label(), "missing_ca");

    let dir = temp_dir("ca");
    let with_ca = |path: &Path| {
        Client::new(&ClientConfig {
            ca_file: Some(path.to_owned()),
            ..ClientConfig::new("https://p:9090")
        })
    };
    let e = with_ca(&dir.join("absent.pem")).unwrap_err();
    match &e {
        BuildError::ReadCa { source, .. } => assert_eq!(source.kind(), io::ErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    assert!(matches!(
        with_ca(&garbage),
        Err(BuildError::BadCa { source: None, .. })
    ));
    let (ca, _) = test_ca("gofe-prom-test-ca");
    let good = dir.join("ca.pem");
    std::fs::write(&good, ca.pem()).unwrap();
    assert!(with_ca(&good).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn forms_are_url_encoded() {
    assert_eq!(
        encode_form(&[("query", "sum(rate(x{a=\"b c\"}[5m]))"), ("time", "1.5")]),
        "query=sum%28rate%28x%7Ba%3D%22b+c%22%7D%5B5m%5D%29%29&time=1.5"
    );
    assert_eq!(
        encode_form(&[("match[]", "é&=")]),
        "match%5B%5D=%C3%A9%26%3D"
    );
    assert_eq!(encode_form(&[]), "");
}

// === success shapes ===

#[tokio::test]
async fn an_instant_vector_is_form_posted_and_keeps_nan_and_infinities() {
    let server = Server::start(success(
        r#"{"resultType":"vector","result":[
            {"metric":{"__name__":"up","job":"a"},"value":[1700000000.25,"1.5"]},
            {"metric":{"job":"b"},"value":[1700000000.25,"NaN"]},
            {"metric":{"job":"c"},"value":[1700000000.25,"+Inf"]},
            {"metric":{"job":"d"},"value":[1700000000.25,"-Inf"]}]}"#,
    ))
    .await;
    let prom = client(&format!("{}/prefix/", server.url()));
    let samples = prom
        .query("rate(x{a=\"b c\"}[5m])", Some(1_700_000_000.25))
        .await
        .unwrap();
    assert_eq!(samples.len(), 4);
    assert_eq!(samples[0].labels["__name__"], "up");
    assert_eq!(samples[0].labels["job"], "a");
    assert_eq!(samples[0].timestamp, 1_700_000_000.25);
    assert_eq!(samples[0].value, 1.5);
    assert!(samples[1].value.is_nan());
    assert_eq!(samples[2].value, f64::INFINITY);
    assert_eq!(samples[3].value, f64::NEG_INFINITY);

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/prefix/api/v1/query");
    assert_eq!(
        seen[0].content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        seen[0].body,
        "query=rate%28x%7Ba%3D%22b+c%22%7D%5B5m%5D%29&time=1700000000.250"
    );

    // Without a time, none is sent (Prometheus evaluates at its now).
    prom.query("up", None).await.unwrap();
    assert_eq!(server.seen()[1].body, "query=up");
}

#[tokio::test]
async fn a_scalar_is_one_sample_without_labels() {
    let server = Server::start(success(r#"{"resultType":"scalar","result":[12.5,"42"]}"#)).await;
    let samples = client(&server.url()).query("42", None).await.unwrap();
    assert_eq!(
        samples,
        vec![Sample {
            labels: Labels::new(),
            timestamp: 12.5,
            value: 42.0
        }]
    );
}

#[tokio::test]
async fn a_range_query_gives_a_matrix() {
    let server = Server::start(success(
        r#"{"resultType":"matrix","result":[
            {"metric":{"job":"a"},"values":[[100,"1"],[110,"NaN"],[120,"-Inf"]]},
            {"metric":{"job":"b"},"values":[[100,"2"]]}]}"#,
    ))
    .await;
    let series = client(&server.url())
        .query_range("x", 100.0, 120.0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0].labels["job"], "a");
    assert_eq!(series[0].points[0], (100.0, 1.0));
    assert!(series[0].points[1].1.is_nan());
    assert_eq!(series[0].points[2], (120.0, f64::NEG_INFINITY));
    assert_eq!(series[1].points, vec![(100.0, 2.0)]);
    let seen = server.seen();
    assert_eq!(seen[0].path, "/api/v1/query_range");
    assert_eq!(
        seen[0].body,
        "query=x&start=100.000&end=120.000&step=10.000"
    );
}

#[tokio::test]
async fn series_are_listed_with_their_names() {
    let server = Server::start(success(
        r#"[{"__name__":"http_total","job":"a"},{"__name__":"queue_depth"}]"#,
    ))
    .await;
    let series = client(&server.url())
        .series("{__name__=~\"http_.*\"}", 1000.0)
        .await
        .unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0]["__name__"], "http_total");
    assert_eq!(series[1]["__name__"], "queue_depth");
    let seen = server.seen();
    assert_eq!(seen[0].path, "/api/v1/series");
    assert_eq!(
        seen[0].body,
        "match%5B%5D=%7B__name__%3D%7E%22http_.*%22%7D&start=1000.000"
    );
}

#[tokio::test]
async fn a_result_of_the_wrong_type_is_named() {
    let server = Server::start(success(r#"{"resultType":"string","result":[1,"x"]}"#)).await;
    let e = client(&server.url())
        .query("\"x\"", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::UnexpectedResult { got, .. } if got == "string"),
        "{e:?}"
    );
    assert!(!e.is_unavailable());
    assert_eq!(e.metric_label(), "unexpected_result");
}

// === errors ===

#[tokio::test]
async fn bad_promql_is_rejected_with_prometheus_reason() {
    let server = Server::start(Reply::Answer(
        400,
        r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected \")\""}"#
            .into(),
    ))
    .await;
    let e = client(&server.url())
        .query("sum(x))", None)
        .await
        .unwrap_err();
    match &e {
        Error::Rejected {
            status,
            error_type,
            message,
        } => {
            assert_eq!(*status, 400);
            assert_eq!(error_type, "bad_data");
            assert_eq!(message, "1:5: parse error: unexpected \")\"");
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.is_unavailable());
    assert_eq!(e.metric_label(), "rejected");
    assert_eq!(
        e.to_string(),
        "prometheus rejected the query (bad_data): 1:5: parse error: unexpected \")\""
    );
}

#[tokio::test]
async fn a_503_is_unavailable() {
    let server = Server::start(Reply::Answer(
        503,
        r#"{"status":"error","errorType":"unavailable","error":"shutting down"}"#.into(),
    ))
    .await;
    let e = client(&server.url()).query("up", None).await.unwrap_err();
    match &e {
        Error::Unavailable {
            status: 503,
            error_type: Some(t),
            message,
        } => assert_eq!(
            (t.as_str(), message.as_str()),
            ("unavailable", "shutting down")
        ),
        other => panic!("{other:?}"),
    }
    assert!(e.is_unavailable());
    assert_eq!(e.metric_label(), "unavailable");

    // A proxy's 502 page is not JSON, and still just unavailable.
    let server = Server::start(Reply::Answer(502, "<html>Bad Gateway</html>".into())).await;
    let e = client(&server.url()).query("up", None).await.unwrap_err();
    assert!(
        matches!(&e, Error::Unavailable { status: 502, error_type: None, message } if message.contains("Bad Gateway")),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_answer_that_is_not_prometheus_json_is_malformed() {
    let server = Server::start(Reply::Answer(200, "<html>hello</html>".into())).await;
    let e = client(&server.url()).query("up", None).await.unwrap_err();
    match &e {
        Error::Malformed {
            status: 200,
            source: Some(_),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(
        std::error::Error::source(&e).is_some(),
        "the JSON error is kept"
    );
    assert!(!e.is_unavailable());
    assert_eq!(e.metric_label(), "malformed");

    // A 404 (a wrong path prefix) is not the query's or the server's health's fault either.
    let server = Server::start(Reply::Answer(404, "404 page not found".into())).await;
    let e = client(&server.url()).query("up", None).await.unwrap_err();
    assert!(matches!(e, Error::Malformed { status: 404, .. }), "{e:?}");

    // Success with a sample value that is not a number.
    let server = Server::start(success(
        r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"lots"]}]}"#,
    ))
    .await;
    let e = client(&server.url()).query("up", None).await.unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e:?}");
}

#[tokio::test]
async fn an_answer_over_the_size_limit_is_malformed() {
    let server = Server::start(success(&format!("[{}]", "{},".repeat(500) + "{}"))).await;
    let prom = Client::new(&ClientConfig {
        max_answer_bytes: 100,
        ..ClientConfig::new(server.url())
    })
    .unwrap();
    let e = prom.series("up", 0.0).await.unwrap_err();
    assert!(
        matches!(&e, Error::Malformed { problem, .. } if problem.contains("larger than 100 bytes")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_refused() {
    // A port that was just free: nothing listens there.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let e = client(&format!("http://{addr}"))
        .query("up", None)
        .await
        .unwrap_err();
    match &e {
        Error::Refused { url, source } => {
            assert_eq!(url, &format!("http://{addr}"));
            assert!(
                has_io_kind(source.as_ref(), io::ErrorKind::ConnectionRefused),
                "{source:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_unavailable());
    assert_eq!(e.metric_label(), "refused");
    assert_eq!(
        e.to_string(),
        format!("connection refused by http://{addr}")
    );
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_a_connect_failure() {
    // `.invalid` never resolves (RFC 2606).
    let e = client("http://gofe-prom-test.invalid:9090")
        .query("up", None)
        .await
        .unwrap_err();
    match &e {
        Error::Connect { detail, .. } => assert!(detail.contains("dns"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert!(std::error::Error::source(&e).is_some());
    assert!(e.is_unavailable());
    assert_eq!(e.metric_label(), "connect");
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_a_timeout() {
    let server = Server::start(Reply::Hang).await;
    let prom = Client::new(&ClientConfig {
        timeout: Duration::from_millis(200),
        ..ClientConfig::new(server.url())
    })
    .unwrap();
    let e = prom.query("up", None).await.unwrap_err();
    assert!(
        matches!(e, Error::Timeout { timeout, .. } if timeout == Duration::from_millis(200)),
        "{e:?}"
    );
    assert!(e.is_unavailable());
    assert_eq!(e.metric_label(), "timeout");
    assert_eq!(server.seen().len(), 1, "the request was sent");
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_a_transport_failure() {
    for reply in [Reply::Close, Reply::Truncated] {
        let server = Server::start(reply).await;
        let e = client(&server.url()).query("up", None).await.unwrap_err();
        assert!(matches!(e, Error::Transport { .. }), "{e:?}");
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.is_unavailable());
        assert_eq!(e.metric_label(), "transport");
    }
}

// === pooling ===

#[tokio::test]
async fn clones_share_one_pool_of_connections() {
    let server = Server::start(success("[]")).await;
    let prom = client(&server.url());
    let clone = prom.clone();
    for i in 0..6 {
        let c = if i % 2 == 0 { &prom } else { &clone };
        c.series("up", 0.0).await.unwrap();
        // Let the client put the idle connection back into the pool (a task of its own).
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(server.seen().len(), 6);
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        1,
        "one keep-alive connection serves the client and its clone"
    );

    // A client built separately has a pool of its own.
    client(&server.url()).series("up", 0.0).await.unwrap();
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
}

// === TLS ===

fn test_ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap(), key)
}

/// A TLS acceptor serving a certificate for 127.0.0.1 signed by `ca`.
fn acceptor(ca: &(rcgen::Certificate, rcgen::KeyPair)) -> tokio_rustls::TlsAcceptor {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

#[tokio::test]
async fn https_trusts_exactly_the_given_ca() {
    let ca = test_ca("gofe-prom-test-ca");
    let other = test_ca("some-other-ca");
    let dir = temp_dir("tls");
    let (ca_file, other_file) = (dir.join("ca.pem"), dir.join("other.pem"));
    std::fs::write(&ca_file, ca.0.pem()).unwrap();
    std::fs::write(&other_file, other.0.pem()).unwrap();
    let server = Server::start_with(success("[]"), Some(acceptor(&ca))).await;
    let url = format!("https://{}", server.addr);
    let with_ca = |ca_file: &Path| {
        Client::new(&ClientConfig {
            ca_file: Some(ca_file.to_owned()),
            ..ClientConfig::new(url.clone())
        })
        .unwrap()
    };

    let listed = with_ca(&ca_file).series("up", 0.0).await.unwrap();
    assert!(listed.is_empty());
    assert_eq!(server.seen()[0].path, "/api/v1/series");

    let e = with_ca(&other_file).series("up", 0.0).await.unwrap_err();
    match &e {
        Error::Tls { detail, .. } => assert!(detail.contains("certificate"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert!(e.is_unavailable());
    assert_eq!(e.metric_label(), "tls");
    assert_eq!(
        server.seen().len(),
        1,
        "nothing was sent to the untrusted server"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn metric_labels_are_distinct() {
    let source: Cause = Arc::new(io::Error::other("x"));
    let url = String::new();
    let all = [
        Error::Refused {
            url: url.clone(),
            source: source.clone(),
        },
        Error::Connect {
            url: url.clone(),
            detail: String::new(),
            source: source.clone(),
        },
        Error::Tls {
            url: url.clone(),
            detail: String::new(),
            source: source.clone(),
        },
        Error::Timeout {
            url: url.clone(),
            timeout: Duration::ZERO,
        },
        Error::Transport {
            url,
            detail: String::new(),
            source,
        },
        Error::Unavailable {
            status: 503,
            error_type: None,
            message: String::new(),
        },
        Error::Rejected {
            status: 400,
            error_type: String::new(),
            message: String::new(),
        },
        Error::UnexpectedResult {
            expected: "",
            got: String::new(),
        },
        Error::Malformed {
            status: 200,
            problem: String::new(),
            source: None,
        },
    ];
    let mut labels: Vec<&str> = all.iter().map(Error::metric_label).collect();
    assert!(labels
        .iter()
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), all.len());
    assert_eq!(
        all.iter().filter(|e| e.is_unavailable()).count(),
        6,
        "connect, refused, tls, timeout, transport and 5xx are unavailability"
    );
}
