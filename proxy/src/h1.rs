//! The proxy's HTTP/1.1 client codec: request heads out, response heads and bodies in.
//!
//! hyper's client connection hands every request to its dispatcher over a channel and every
//! response back over a one-shot channel, moving both through each hop; a proxy that owns the
//! connection for the whole exchange needs neither. Here the task serving the client writes the
//! request head (and streams the request body) straight onto the upstream socket and parses the
//! response head with `httparse` out of the connection's read buffer. Response bodies are cut
//! from that same buffer without copying.
//!
//! This module is the byte-level part, free of pools and policy: [`encode_head`] writes a
//! request head, [`parse_head`] reads a response head and decides the body's framing
//! (RFC 9112 §6.3), [`ChunkedDecoder`] takes a chunked body apart. [`crate::upstream`] runs them
//! on pooled connections.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// Most response header lines accepted (hyper's default too).
pub(crate) const MAX_HEADERS: usize = 100;
/// Largest response head (or chunked-body trailer block) accepted, in bytes.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Why an upstream exchange failed at the HTTP/1.1 level.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    /// The upstream closed the connection before a complete response.
    #[error("upstream closed the connection before a complete response")]
    Closed,
    /// The response head could not be parsed.
    #[error("invalid response head from upstream: {0}")]
    Parse(#[from] httparse::Error),
    /// The response head is larger than [`MAX_HEAD_BYTES`].
    #[error("response head from upstream exceeds {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// A header name or value in the response is not valid HTTP.
    #[error("invalid header in the upstream response")]
    InvalidHeader,
    /// `Content-Length` values that are not a number or disagree.
    #[error("invalid content-length in the upstream response")]
    BadLength,
    /// A chunked body that does not follow RFC 9112 §7.1.
    #[error("invalid chunked body from upstream")]
    BadChunk,
    /// `101 Switching Protocols`: the proxy does not forward upgrades.
    #[error("upstream switched protocols; upgrades are not proxied")]
    Upgrade,
}

/// How a request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body.
    None,
    /// The request's own `Content-Length` frames it.
    Length,
    /// `Transfer-Encoding: chunked`, added by the proxy.
    Chunked,
}

/// Appends the head of a request with origin-form target `target` to `out` and says how its
/// body is to be framed: by the request's own `Content-Length` if it has one, not at all if it
/// has no body (`body_empty`), else chunked. `headers` must already be free of hop-by-hop
/// headers (in particular `Transfer-Encoding`).
pub(crate) fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body_empty: bool,
) -> RequestFraming {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = if headers.contains_key(header::CONTENT_LENGTH) {
        RequestFraming::Length
    } else if body_empty {
        RequestFraming::None
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        RequestFraming::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// Appends the size line of a chunk of `len` bytes (`len` > 0).
pub(crate) fn encode_chunk_size(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk and the trailer section (`trailers` may be empty).
pub(crate) fn encode_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body is framed (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body (`HEAD`, 204, 304, or `Content-Length: 0`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: BodyFraming,
    /// The connection may carry another request after this response's body.
    pub(crate) keep_alive: bool,
}

/// Parses the response head at the start of `buf`, skipping interim (1xx) responses. On
/// success the head's bytes are taken off `buf` (header values keep pointing into them, no
/// copy); `Ok(None)` means more bytes are needed. `head_request` tells that the request was a
/// `HEAD`, whose response has no body whatever its headers say. `spans` is scratch space kept
/// by the caller so parsing allocates nothing of its own.
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    spans: &mut Vec<Span>,
) -> Result<Option<ResponseHead>, H1Error> {
    loop {
        // Uninitialised: zeroing 100 header slots would cost more than parsing a short head.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(H1Error::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let code = response.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| H1Error::InvalidHeader)?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(H1Error::Upgrade);
        }
        if status.is_informational() {
            // 100 Continue, 103 Early Hints and the like: not forwarded, the final response
            // follows.
            buf.advance(len);
            continue;
        }
        let http11 = response.version == Some(1);
        let base = buf.as_ptr() as usize;
        spans.clear();
        for h in response.headers.iter() {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            spans.push(Span {
                name: (name, name + h.name.len()),
                value: (value, value + h.value.len()),
            });
        }
        let head = buf.split_to(len).freeze();
        return build_head(&head, spans, status, http11, head_request).map(Some);
    }
}

/// Where one header's name and value lie in a response head.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

fn build_head(
    head: &Bytes,
    spans: &[Span],
    status: StatusCode,
    http11: bool,
    head_request: bool,
) -> Result<ResponseHead, H1Error> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let mut close = !http11;
    for span in spans {
        let name = HeaderName::from_bytes(&head[span.name.0..span.name.1])
            .map_err(|_| H1Error::InvalidHeader)?;
        let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1))
            .map_err(|_| H1Error::InvalidHeader)?;
        if name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes())?;
            if length.is_some_and(|prev| prev != n) {
                return Err(H1Error::BadLength);
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            coded = true;
            // Only the last coding frames the message (RFC 9112 §6.3).
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !http11 && token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        BodyFraming::Empty
    } else if coded {
        if chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        }
    } else {
        match length {
            Some(0) => BodyFraming::Empty,
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilClose,
        }
    };
    Ok(ResponseHead {
        status,
        headers,
        framing,
        keep_alive: !close && framing != BodyFraming::UntilClose,
    })
}

fn parse_length(value: &[u8]) -> Result<u64, H1Error> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(H1Error::BadLength);
    }
    Ok(digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Takes a chunked body apart as its bytes arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkedDecoder {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data: this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Expecting the trailer section after the last chunk.
    Trailers,
    /// The body is complete.
    Done,
}

/// What [`ChunkedDecoder::decode`] found.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The body is complete, with these trailers (possibly none).
    End(Option<HeaderMap>),
    /// More bytes are needed.
    NeedMore,
}

impl ChunkedDecoder {
    /// Decodes from the front of `buf`, taking what it uses off it.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match *self {
                ChunkedDecoder::Done => return Ok(Decoded::End(None)),
                ChunkedDecoder::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *self = if size == 0 {
                            ChunkedDecoder::Trailers
                        } else {
                            ChunkedDecoder::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                        return Err(H1Error::BadChunk)
                    }
                    Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                    Err(_) => return Err(H1Error::BadChunk),
                },
                ChunkedDecoder::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - n as u64;
                    *self = if left == 0 {
                        ChunkedDecoder::DataEnd
                    } else {
                        ChunkedDecoder::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                ChunkedDecoder::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::BadChunk);
                    }
                    buf.advance(2);
                    *self = ChunkedDecoder::Size;
                }
                ChunkedDecoder::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = ChunkedDecoder::Done;
                        return Ok(Decoded::End(None));
                    }
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (used, trailers) = match httparse::parse_headers(buf, &mut headers) {
                        Ok(httparse::Status::Complete((used, parsed))) => {
                            let mut map = HeaderMap::with_capacity(parsed.len());
                            for h in parsed {
                                let name = HeaderName::from_bytes(h.name.as_bytes())
                                    .map_err(|_| H1Error::InvalidHeader)?;
                                let value = HeaderValue::from_bytes(h.value)
                                    .map_err(|_| H1Error::InvalidHeader)?;
                                map.append(name, value);
                            }
                            (used, map)
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                            return Err(H1Error::HeadTooLarge)
                        }
                        Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                        Err(e) => return Err(e.into()),
                    };
                    buf.advance(used);
                    *self = ChunkedDecoder::Done;
                    return Ok(Decoded::End(Some(trailers)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], head_request: bool) -> Result<Option<ResponseHead>, H1Error> {
        let mut buf = BytesMut::from(raw);
        parse_head(&mut buf, head_request, &mut Vec::new())
    }

    #[test]
    fn a_request_head_is_encoded_with_its_framing() {
        let mut h = HeaderMap::new();
        h.insert("host", "a".parse().unwrap());
        h.append("x-many", "1".parse().unwrap());
        h.append("x-many", "2".parse().unwrap());
        let mut out = Vec::new();
        let f = encode_head(&mut out, &Method::GET, "/p?q=1", &h, true);
        assert_eq!(f, RequestFraming::None);
        assert_eq!(
            out,
            b"GET /p?q=1 HTTP/1.1\r\nhost: a\r\nx-many: 1\r\nx-many: 2\r\n\r\n"
        );

        out.clear();
        assert_eq!(
            encode_head(&mut out, &Method::POST, "/", &h, false),
            RequestFraming::Chunked
        );
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));

        h.insert("content-length", "3".parse().unwrap());
        out.clear();
        assert_eq!(
            encode_head(&mut out, &Method::POST, "/", &h, false),
            RequestFraming::Length
        );
        assert!(!out.windows(8).any(|w| w == b"transfer"));
    }

    #[test]
    fn chunk_sizes_are_hex() {
        for (len, text) in [(1, "1"), (15, "f"), (16, "10"), (4096, "1000"), (255, "ff")] {
            let mut out = Vec::new();
            encode_chunk_size(&mut out, len);
            assert_eq!(out, format!("{text}\r\n").as_bytes());
        }
        let mut out = Vec::new();
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        encode_last_chunk(&mut out, Some(&t));
        assert_eq!(out, b"0\r\ngrpc-status: 0\r\n\r\n");
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let cases: &[(&[u8], bool, BodyFraming, bool)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
                false,
                BodyFraming::Length(3),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                false,
                BodyFraming::Empty,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false,
                BodyFraming::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false,
                BodyFraming::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                false,
                BodyFraming::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                false,
                BodyFraming::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                false,
                BodyFraming::Empty,
                true,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                false,
                BodyFraming::Empty,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                true,
                BodyFraming::Empty,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
                false,
                BodyFraming::Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                false,
                BodyFraming::Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive\r\n\r\n",
                false,
                BodyFraming::Length(1),
                true,
            ),
        ];
        for (raw, head_request, framing, keep_alive) in cases {
            let head = parse(raw, *head_request).unwrap().unwrap();
            let text = String::from_utf8_lossy(raw);
            assert_eq!(head.framing, *framing, "{text}");
            assert_eq!(head.keep_alive, *keep_alive, "{text}");
        }
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_and_keeps_its_headers() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nServer: t\r\nContent-Length: 2\r\n\r\nhiHTTP"[..],
        );
        let head = parse_head(&mut buf, false, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        let a: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(head.headers["server"], "t");
        assert_eq!(&buf[..], b"hiHTTP", "only the head is consumed");
    }

    #[test]
    fn interim_responses_are_skipped_and_upgrades_refused() {
        let head = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert!(!head.headers.contains_key("link"));
        assert!(matches!(
            parse(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
                false
            ),
            Err(H1Error::Upgrade)
        ));
    }

    #[test]
    fn partial_and_bad_heads() {
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
        assert!(parse(b"", false).unwrap().is_none());
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
        assert!(matches!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Err(H1Error::BadLength)
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false),
            Err(H1Error::BadLength)
        ));
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 10, b'a');
        assert!(matches!(parse(&huge, false), Err(H1Error::HeadTooLarge)));
    }

    /// Decodes `wire` fed in pieces of `step` bytes; returns the body and the trailers.
    fn decode_in_pieces(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), H1Error> {
        let mut d = ChunkedDecoder::Size;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::End(trailers) => return Ok((body, trailers)),
                Decoded::NeedMore => {
                    if fed == wire.len() {
                        return Err(H1Error::Closed);
                    }
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_however_they_arrive() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (body, trailers) = decode_in_pieces(wire, step).unwrap();
            assert_eq!(body, b"hello 0123456789", "step {step}");
            assert_eq!(trailers.unwrap()["x-t"], "1");
        }
        let (body, trailers) = decode_in_pieces(b"0\r\n\r\n", 1).unwrap();
        assert!(body.is_empty() && trailers.is_none());
        assert!(decode_in_pieces(b"zz\r\n", 4).is_err());
        assert!(
            decode_in_pieces(b"3\r\nabcX\r\n", 4).is_err(),
            "data must end with CRLF"
        );
    }

    proptest::proptest! {
        #[test]
        fn chunked_round_trip(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..300), 0..8),
            step in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for c in &chunks {
                encode_chunk_size(&mut wire, c.len());
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
            }
            encode_last_chunk(&mut wire, None);
            let (body, _) = decode_in_pieces(&wire, step).unwrap();
            proptest::prop_assert_eq!(body, chunks.concat());
        }

        #[test]
        fn response_parsing_never_panics(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let mut buf = BytesMut::from(&raw[..]);
            let _ = parse_head(&mut buf, false, &mut Vec::new());
            let mut d = ChunkedDecoder::Size;
            let mut buf = BytesMut::from(&raw[..]);
            for _ in 0..64 {
                match d.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => {}
                    _ => break,
                }
            }
        }
    }
}
