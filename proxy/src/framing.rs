//! Request framing as the client sent it, before hyper normalises it.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` is how requests are smuggled
//! past proxies (RFC 9112 §6.1). hyper frames such a request by `Transfer-Encoding`, closes the
//! connection after it, and drops `Content-Length` before the proxy ever sees the request, so
//! the conflict cannot be seen in the parsed headers. [`FramingWatch`] sits between the socket
//! and hyper on HTTP/1.1 connections, follows the request framing of the bytes hyper is about to
//! read (heads, `Content-Length` bodies, chunked bodies) and records which request on the
//! connection (counting from 1) carried both headers; `forward` answers that request with 400
//! and closes. Earlier requests pipelined ahead of it are served normally.
//!
//! The watch is cheap by construction: it looks only at the first bytes of each header line
//! (enough to tell `content-length:` and `transfer-encoding:` from anything else), jumps to the
//! end of every other line with `memchr`, and skips bodies by their length without looking at
//! them. When it meets something it does not understand (which hyper rejects anyway) or an
//! HTTP/2 connection preface, it switches itself off for the rest of the connection. Switched
//! off it fails open: hyper's own handling (Transfer-Encoding wins, connection closed) still
//! keeps anything from being smuggled; only the explicit 400 is lost.
//!
//! On an HTTP/2 connection (the 24-byte connection preface, cleartext or inside TLS) the watch
//! follows frames instead ([`ControlFrames`]): it reads each 9-byte frame header and jumps over
//! the payload, and counts the PING and SETTINGS frames that oblige the proxy to answer. A
//! client may have [`MAX_CONTROL_FRAMES`] (1000, Envoy's `max_outbound_control_frames`) of
//! them outstanding, the allowance refilling at [`CONTROL_FRAMES_PER_SECOND`]; past that the
//! connection is closed (a read error ends it). hyper's HTTP/2 server queues at most one answer
//! and stops reading while it cannot write it, so a flood costs memory nowhere, but without
//! this a client could keep the proxy answering pings at line rate, or park a connection on
//! answers it never reads, forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
const H2_PREFACE: &[u8] = b"PRI ";
const CHUNKED: &[u8] = b"chunked";

/// Follows HTTP/1.1 request framing over the bytes of one connection.
#[derive(Debug)]
pub(crate) struct Tracker {
    state: State,
    head: Head,
    /// Complete request heads seen so far (wrapping).
    heads: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Inside a request head.
    Head(Line),
    /// Inside a body of known length: this many bytes left.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Not following this connection any more.
    Off,
}

/// Where in a head line the tracker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// At the start of a line.
    Start,
    /// Saw `\r` at the start of a line: the blank line ending the head (or, before the request
    /// line, a stray empty line).
    BlankCr,
    /// Matching the start of the request line against the HTTP/2 preface.
    Request(u8),
    /// Matching a header name: `len` bytes of `content-length:` (`cl`) or
    /// `transfer-encoding:` matched so far.
    Name { len: u8, cl: bool },
    /// Looking for the end of a line whose content does not matter.
    Skip,
    /// Inside a `Content-Length` value.
    Length {
        value: Option<u64>,
        digits: bool,
        done: bool,
    },
    /// Inside a `Transfer-Encoding` value, tracking its last comma-separated token.
    Coding { len: u8, bad: bool, ended: bool },
}

/// What a head has said about its framing so far.
#[derive(Clone, Copy, Debug, Default)]
struct Head {
    /// The request line has started (empty lines before it are skipped, as httparse does).
    started: bool,
    length: Option<u64>,
    length_seen: bool,
    length_bad: bool,
    coding_seen: bool,
    chunked: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// First hex digit of a size line.
    Start,
    /// More hex digits.
    Size(u64),
    /// Whitespace after the size.
    SizeWs(u64),
    /// A chunk extension, up to `\r`.
    Extension(u64),
    /// `\n` closing the size line.
    SizeLf(u64),
    /// Chunk data: this many bytes left.
    Data(u64),
    /// `\r` after data.
    DataCr,
    /// `\n` after data.
    DataLf,
    /// After the last chunk: a trailer line or the final blank line.
    EndCr,
    /// `\n` of the final blank line.
    EndLf,
    /// Inside a trailer line, up to `\r`.
    Trailer,
    /// `\n` of a trailer line.
    TrailerLf,
}

/// What [`Tracker::feed`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing to act on.
    Fine,
    /// Request head number `n` (counting from 1, wrapping) carried both `Content-Length` and
    /// `Transfer-Encoding`.
    Conflict(u32),
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            state: State::Head(Line::Start),
            head: Head::default(),
            heads: 0,
        }
    }
}

impl Tracker {
    /// Whether the tracker stopped following the connection.
    pub(crate) fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// Whether the client owes the rest of a request head: one has begun and is not complete,
    /// or the connection has not yet completed its first.
    pub(crate) fn awaiting_head(&self) -> bool {
        matches!(self.state, State::Head(_)) && (self.head.started || self.heads == 0)
    }

    /// Follows `bytes`, the next bytes the client sent.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Verdict {
        while !bytes.is_empty() {
            let used = match self.state {
                State::Off => return Verdict::Fine,
                State::Body(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        self.next_head()
                    } else {
                        State::Body(left)
                    };
                    n
                }
                State::Chunked(Chunk::Data(left)) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    let left = left - n as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    });
                    n
                }
                State::Head(Line::Skip) => match memchr::memchr(b'\n', bytes) {
                    Some(i) => {
                        self.state = State::Head(Line::Start);
                        i + 1
                    }
                    None => bytes.len(),
                },
                State::Head(line) => {
                    if let Verdict::Conflict(n) = self.head_byte(line, bytes[0]) {
                        return Verdict::Conflict(n);
                    }
                    1
                }
                State::Chunked(chunk) => {
                    self.chunk_byte(chunk, bytes[0]);
                    1
                }
            };
            bytes = &bytes[used..];
        }
        Verdict::Fine
    }

    fn next_head(&mut self) -> State {
        self.head = Head::default();
        State::Head(Line::Start)
    }

    fn head_byte(&mut self, line: Line, b: u8) -> Verdict {
        let lower = b.to_ascii_lowercase();
        let next = match line {
            Line::Start if b == b'\n' => return self.line_end_blank(),
            Line::Start if b == b'\r' => Line::BlankCr,
            Line::BlankCr if b == b'\n' => return self.line_end_blank(),
            Line::BlankCr => {
                self.state = State::Off;
                return Verdict::Fine;
            }
            Line::Start if !self.head.started => {
                self.head.started = true;
                self.match_request(0, b)
            }
            Line::Start => match lower {
                b'c' => Line::Name { len: 1, cl: true },
                b't' => Line::Name { len: 1, cl: false },
                _ => Line::Skip,
            },
            Line::Request(len) => self.match_request(len, b),
            Line::Name { len, cl } => {
                let want = if cl {
                    CONTENT_LENGTH
                } else {
                    TRANSFER_ENCODING
                };
                if b == b'\n' {
                    Line::Start
                } else if lower != want[usize::from(len)] {
                    Line::Skip
                } else if usize::from(len) + 1 < want.len() {
                    Line::Name { len: len + 1, cl }
                } else if cl {
                    self.head.length_seen = true;
                    Line::Length {
                        value: Some(0),
                        digits: false,
                        done: false,
                    }
                } else {
                    self.head.coding_seen = true;
                    Line::Coding {
                        len: 0,
                        bad: false,
                        ended: false,
                    }
                }
            }
            Line::Length {
                value,
                digits,
                done,
            } => match b {
                b'\n' => {
                    match value.filter(|_| digits) {
                        Some(v) if self.head.length.is_none_or(|prev| prev == v) => {
                            self.head.length = Some(v)
                        }
                        _ => self.head.length_bad = true,
                    }
                    Line::Start
                }
                b' ' | b'\t' | b'\r' => Line::Length {
                    value,
                    digits,
                    done: digits,
                },
                b'0'..=b'9' if !done => Line::Length {
                    value: value
                        .and_then(|v| v.checked_mul(10))
                        .and_then(|v| v.checked_add(u64::from(b - b'0'))),
                    digits: true,
                    done,
                },
                _ => Line::Length {
                    value: None,
                    digits,
                    done,
                },
            },
            Line::Coding { len, bad, ended } => match b {
                b'\n' => {
                    self.head.chunked = !bad && usize::from(len) == CHUNKED.len();
                    Line::Start
                }
                b',' => Line::Coding {
                    len: 0,
                    bad: false,
                    ended: false,
                },
                b' ' | b'\t' | b'\r' => Line::Coding {
                    len,
                    bad,
                    ended: len > 0,
                },
                _ if ended || bad => Line::Coding {
                    len,
                    bad: true,
                    ended,
                },
                _ => {
                    let fits = CHUNKED.get(usize::from(len)) == Some(&lower);
                    Line::Coding {
                        len: len + u8::from(fits),
                        bad: !fits,
                        ended,
                    }
                }
            },
            Line::Skip => Line::Skip,
        };
        // `match_request` may have switched the tracker off.
        if self.state != State::Off {
            self.state = State::Head(next);
        }
        Verdict::Fine
    }

    fn match_request(&mut self, len: u8, b: u8) -> Line {
        if b == b'\n' {
            return Line::Start;
        }
        if H2_PREFACE.get(usize::from(len)) != Some(&b) {
            return Line::Skip;
        }
        if usize::from(len) + 1 == H2_PREFACE.len() {
            self.state = State::Off;
            return Line::Skip;
        }
        Line::Request(len + 1)
    }

    /// A blank line: before the request line it is skipped, after it the head is complete.
    fn line_end_blank(&mut self) -> Verdict {
        if !self.head.started {
            self.state = State::Head(Line::Start);
            return Verdict::Fine;
        }
        let head = self.head;
        self.heads = self.heads.wrapping_add(1);
        if head.coding_seen && head.length_seen {
            // hyper closes the connection after this request: nothing after it matters.
            self.state = State::Off;
            return Verdict::Conflict(self.heads);
        }
        self.state = if head.coding_seen {
            if head.chunked {
                State::Chunked(Chunk::Start)
            } else {
                State::Off
            }
        } else if head.length_bad {
            State::Off
        } else {
            match head.length {
                Some(n) if n > 0 => State::Body(n),
                _ => self.next_head(),
            }
        };
        Verdict::Fine
    }

    /// One byte of a chunked body outside chunk data, mirroring hyper's decoder.
    fn chunk_byte(&mut self, chunk: Chunk, b: u8) {
        let hex = match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        };
        let grow = |size: u64, d: u8| size.checked_mul(16)?.checked_add(u64::from(d));
        let next = match (chunk, b) {
            (Chunk::Start, _) => hex.map(|d| Chunk::Size(u64::from(d))),
            (Chunk::Size(size), _) if hex.is_some() => {
                hex.and_then(|d| grow(size, d)).map(Chunk::Size)
            }
            (Chunk::Size(size) | Chunk::SizeWs(size), b' ' | b'\t') => Some(Chunk::SizeWs(size)),
            (Chunk::Size(size) | Chunk::SizeWs(size) | Chunk::Extension(size), b';') => {
                Some(Chunk::Extension(size))
            }
            (Chunk::Size(size) | Chunk::SizeWs(size) | Chunk::Extension(size), b'\r') => {
                Some(Chunk::SizeLf(size))
            }
            (Chunk::Extension(_), b'\n') => None,
            (Chunk::Extension(size), _) => Some(Chunk::Extension(size)),
            (Chunk::SizeLf(0), b'\n') => Some(Chunk::EndCr),
            (Chunk::SizeLf(size), b'\n') => Some(Chunk::Data(size)),
            (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
            (Chunk::DataLf, b'\n') => Some(Chunk::Start),
            (Chunk::EndCr, b'\r') => Some(Chunk::EndLf),
            (Chunk::Trailer, b'\r') => Some(Chunk::TrailerLf),
            (Chunk::EndCr | Chunk::Trailer, _) => Some(Chunk::Trailer),
            (Chunk::TrailerLf, b'\n') => Some(Chunk::EndCr),
            (Chunk::EndLf, b'\n') => {
                self.state = self.next_head();
                return;
            }
            _ => None,
        };
        self.state = next.map_or(State::Off, State::Chunked);
    }
}

// === impl ControlFrames ===

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FLAG_ACK: u8 = 0x1;

/// How many answer-obliging control frames (PING, SETTINGS without ACK) an HTTP/2 client may
/// have outstanding: Envoy's `max_outbound_control_frames` default.
pub(crate) const MAX_CONTROL_FRAMES: u32 = 1000;

/// How fast the allowance comes back: far above any keep-alive or BDP ping rate.
pub(crate) const CONTROL_FRAMES_PER_SECOND: u32 = 100;

/// The client sent more control frames than it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flood {
    /// The frame that broke the limit: `ping` or `settings`.
    pub(crate) kind: &'static str,
}

/// Follows the frames of an HTTP/2 connection (after its preface) and meters the control frames
/// the proxy must answer. Per read: one header parse per frame, payloads skipped unread; the
/// clock is read only for a PING or SETTINGS frame.
#[derive(Debug, Default)]
pub(crate) struct ControlFrames {
    header: [u8; 9],
    /// Header bytes of the current frame seen so far.
    have: u8,
    /// Payload bytes of the current frame still to skip.
    skip: u32,
    /// When the allowance would be whole again; `None` before the first control frame.
    due: Option<Instant>,
}

impl ControlFrames {
    /// Follows `bytes`, the next bytes the client sent.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Flood> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.skip -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let have = usize::from(self.have);
            let n = (9 - have).min(bytes.len());
            self.header[have..have + n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if have + n < 9 {
                self.have = (have + n) as u8;
                return Ok(());
            }
            self.have = 0;
            let h = self.header;
            self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]);
            let kind = match h[3] {
                FRAME_PING => "ping",
                FRAME_SETTINGS => "settings",
                _ => continue,
            };
            if h[4] & FLAG_ACK == 0 {
                self.spend(kind)?;
            }
        }
        Ok(())
    }

    /// One answer-obliging frame against the allowance: a virtual-scheduling token bucket
    /// (GCRA). Each frame moves `due` on by one interval (10 ms at 100/s); the frame is
    /// refused when that puts `due` more than the whole allowance (1000 intervals) ahead of
    /// now. Quiet time brings the allowance back, never past 1000.
    fn spend(&mut self, kind: &'static str) -> Result<(), Flood> {
        const INTERVAL: Duration =
            Duration::from_micros(1_000_000 / CONTROL_FRAMES_PER_SECOND as u64);
        const TOLERANCE: Duration = Duration::from_micros(
            1_000_000 / CONTROL_FRAMES_PER_SECOND as u64 * MAX_CONTROL_FRAMES as u64,
        );
        let now = Instant::now();
        let due = self.due.map_or(now, |d| d.max(now)) + INTERVAL;
        if due.duration_since(now) > TOLERANCE {
            return Err(Flood { kind });
        }
        self.due = Some(due);
        Ok(())
    }
}

/// What the watch knows of a connection's protocol.
#[derive(Debug)]
enum Protocol {
    /// Could still be HTTP/2: this many bytes of the preface matched.
    Sniffing(u8),
    /// HTTP/2, frames followed.
    Http2(ControlFrames),
    /// HTTP/1.x (the [`Tracker`]'s business).
    Http1,
}

// === impl FramingWatch ===

/// Which request of a connection carried both framings: 0 for none, else [`CONFLICT_FLAG`] or'd
/// with the request's number (counting from 1, wrapping at `u32`).
pub(crate) type ConflictCell = Arc<AtomicU64>;

/// Marks a [`ConflictCell`] as set.
pub(crate) const CONFLICT_FLAG: u64 = 1 << 32;

/// An HTTP/1.1 downstream stream whose request framing is followed by a [`Tracker`]; a head
/// with both framings is recorded in `conflict`.
///
/// It also enforces the listener's `request_headers_timeout`, as Envoy does: from the first
/// byte of a request head (and, for a new connection, from its first read) until the head is
/// complete. The timer is armed only when a read finds nothing while a head is owed, which a
/// request arriving in one piece never does, and it is one reusable timer per connection;
/// an expired head fails the read with `TimedOut`, which ends the connection.
pub(crate) struct FramingWatch<T> {
    io: T,
    tracker: Tracker,
    conflict: ConflictCell,
    header_timer: Option<HeaderTimer>,
    protocol: Protocol,
    /// Counts connections closed for a control-frame flood.
    flood: IntCounter,
}

/// The per-connection timer of `request_headers_timeout`.
struct HeaderTimer {
    timeout: Duration,
    /// Created the first time it is needed.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether `sleep` is set for the head now owed.
    armed: bool,
}

impl HeaderTimer {
    /// Whether the head owed now has run out of time (arming the timer for it if needed).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.timeout;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.sleep
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }
}

impl<T> FramingWatch<T> {
    /// Watches `io`, recording in `conflict` which request carries both framings, cutting off
    /// a client that takes longer than `header_timeout` to send a request head, and closing an
    /// HTTP/2 connection that floods control frames (counted in `flood`).
    pub(crate) fn new(
        io: T,
        conflict: ConflictCell,
        header_timeout: Option<Duration>,
        flood: IntCounter,
    ) -> Self {
        FramingWatch {
            io,
            tracker: Tracker::default(),
            conflict,
            protocol: Protocol::Sniffing(0),
            flood,
            header_timer: header_timeout.map(|timeout| HeaderTimer {
                timeout,
                sleep: None,
                armed: false,
            }),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingWatch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        let frames = match &mut this.protocol {
            Protocol::Http1 => None,
            Protocol::Http2(frames) => Some((frames, new)),
            Protocol::Sniffing(matched) => {
                let at = usize::from(*matched);
                let n = (PREFACE.len() - at).min(new.len());
                if new[..n] != PREFACE[at..at + n] {
                    this.protocol = Protocol::Http1;
                    None
                } else if at + n < PREFACE.len() {
                    *matched = (at + n) as u8;
                    None
                } else {
                    this.protocol = Protocol::Http2(ControlFrames::default());
                    match &mut this.protocol {
                        Protocol::Http2(frames) => Some((frames, &new[n..])),
                        _ => None,
                    }
                }
            }
        };
        if let Some((frames, bytes)) = frames {
            if let Err(flood) = frames.feed(bytes) {
                this.flood.inc();
                tracing::warn!(
                    frame = flood.kind,
                    limit = MAX_CONTROL_FRAMES,
                    "closing an HTTP/2 client connection: control frame flood"
                );
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "HTTP/2 control frame flood",
                )));
            }
            return polled;
        }
        if this.tracker.is_off() {
            return polled;
        }
        if let Verdict::Conflict(n) = this.tracker.feed(&buf.filled()[before..]) {
            this.conflict
                .store(CONFLICT_FLAG | u64::from(n), Ordering::Relaxed);
        }
        if let Some(timer) = &mut this.header_timer {
            if !this.tracker.awaiting_head() {
                timer.armed = false;
            } else if polled.is_pending() && timer.expired(cx) {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request headers timeout",
                )));
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingWatch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[u8]) -> (Verdict, bool) {
        let mut t = Tracker::default();
        let v = t.feed(stream);
        (v, t.is_off())
    }

    #[test]
    fn both_framings_are_a_conflict_in_either_order() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nCONTENT-LENGTH: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: nonsense\r\n\r\n",
            b"POST / HTTP/1.1\ncontent-length: 0\ntransfer-encoding: chunked\n\n",
        ] {
            assert_eq!(
                verdicts(raw).0,
                Verdict::Conflict(1),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn follows_bodies_to_the_next_head() {
        // A length body, a chunked body with an extension and a trailer, then the conflict:
        // found only if every body before it was skipped exactly.
        let raw = b"POST /a HTTP/1.1\r\nContent-Length: 43\r\n\r\n\
            content-length: 1\r\ntransfer-encoding: x\r\n\r\n\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n1A\r\ncontent-length: 1\r\n\r\nabcde\r\n0\r\nx-trailer: 1\r\n\r\n\
            GET /c HTTP/1.1\r\n\r\n\
            POST /d HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut t = Tracker::default();
        let cut = raw.len() - 60;
        assert_eq!(t.feed(&raw[..cut]), Verdict::Fine, "{t:?}");
        assert!(!t.is_off(), "{t:?}");
        assert_eq!(t.feed(&raw[cut..]), Verdict::Conflict(4));
    }

    #[test]
    fn lookalike_headers_are_not_framing() {
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Lengthy: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nx-content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: content-length: 1\r\nX: transfer-encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                verdicts(raw),
                (Verdict::Fine, false),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn http2_and_broken_framing_switch_it_off() {
        assert_eq!(
            verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            (Verdict::Fine, true)
        );
        assert_eq!(
            verdicts(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
            (Verdict::Fine, true)
        );
        assert_eq!(
            verdicts(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            (Verdict::Fine, true)
        );
    }

    #[test]
    fn chunked_must_be_the_last_coding() {
        let mut t = Tracker::default();
        t.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert!(t.is_off(), "hyper refuses it; nothing to follow");
        let mut t = Tracker::default();
        t.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip ,  CHUNKED \r\n\r\n");
        assert_eq!(t.state, State::Chunked(Chunk::Start));
    }

    /// An HTTP/2 frame header and `len` payload bytes of `fill`.
    fn frame(ty: u8, flags: u8, len: usize, fill: u8) -> Vec<u8> {
        let l = (len as u32).to_be_bytes();
        let mut f = vec![l[1], l[2], l[3], ty, flags, 0, 0, 0, 0];
        f.resize(9 + len, fill);
        f
    }

    fn pings(n: usize) -> Vec<u8> {
        (0..n).flat_map(|_| frame(FRAME_PING, 0, 8, 7)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn control_frames_are_metered_and_payloads_skipped() {
        let mut f = ControlFrames::default();
        // A DATA frame whose payload is made of PING frames is skipped, not read.
        let payload = pings(2000);
        let mut data = frame(0, 0, 0, 0);
        data[..3].copy_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        data.extend_from_slice(&payload);
        assert_eq!(f.feed(&data), Ok(()));
        // ACKs oblige no answer and are not counted; HEADERS, WINDOW_UPDATE neither.
        for ty_flags in [
            (FRAME_PING, FLAG_ACK),
            (FRAME_SETTINGS, FLAG_ACK),
            (1, 4),
            (8, 0),
        ] {
            for _ in 0..2000 {
                assert_eq!(f.feed(&frame(ty_flags.0, ty_flags.1, 4, 0)), Ok(()));
            }
        }
        assert_eq!(f.due, None);
        assert_eq!(f.feed(&pings(MAX_CONTROL_FRAMES as usize)), Ok(()));
        assert_eq!(
            f.feed(&frame(FRAME_SETTINGS, 0, 6, 0)),
            Err(Flood { kind: "settings" })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_control_frame_allowance_refills_over_time() {
        // (After a flood the connection is closed: each case starts a new one.)
        let mut f = ControlFrames::default();
        assert_eq!(f.feed(&pings(MAX_CONTROL_FRAMES as usize)), Ok(()));
        tokio::time::advance(Duration::from_secs(1)).await;
        let refill = CONTROL_FRAMES_PER_SECOND as usize;
        assert_eq!(f.feed(&pings(refill)), Ok(()));
        assert_eq!(f.feed(&pings(1)), Err(Flood { kind: "ping" }));

        // A long quiet spell gives back the whole allowance, no more.
        let mut f = ControlFrames::default();
        assert_eq!(f.feed(&pings(10)), Ok(()));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(f.feed(&pings(MAX_CONTROL_FRAMES as usize)), Ok(()));
        assert_eq!(f.feed(&pings(1)), Err(Flood { kind: "ping" }));

        // A steady client below the rate never runs out.
        let mut f = ControlFrames::default();
        for _ in 0..10_000 {
            assert_eq!(f.feed(&pings(1)), Ok(()));
            tokio::time::advance(Duration::from_millis(20)).await;
        }
    }

    proptest::proptest! {
        /// However an HTTP/2 stream is split across reads, the flood is found at the same
        /// frame.
        #[test]
        fn control_frame_splitting_does_not_matter(cuts in proptest::collection::vec(0usize..20_000, 0..8)) {
            let mut raw = frame(0, 0, 100, 6);
            raw.extend(pings(MAX_CONTROL_FRAMES as usize));
            let ok_len = raw.len();
            raw.extend(pings(1));
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % raw.len()).collect();
            cuts.sort_unstable();
            // On a paused clock: no allowance comes back while the bytes are fed.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let _guard = rt.enter();
            let mut f = ControlFrames::default();
            let mut from = 0;
            for cut in cuts.into_iter().chain([raw.len()]) {
                let r = f.feed(&raw[from..cut]);
                proptest::prop_assert_eq!(r.is_err(), cut > ok_len + 8, "cut at {}", cut);
                if r.is_err() {
                    break;
                }
                from = cut;
            }
        }

        /// However the bytes are split across reads, the verdict is the same.
        #[test]
        fn splitting_does_not_matter(cuts in proptest::collection::vec(0usize..200, 0..6)) {
            let raw: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
                POST /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                GET / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % raw.len()).collect();
            cuts.sort_unstable();
            let mut t = Tracker::default();
            let mut found = false;
            let mut from = 0;
            for cut in cuts.into_iter().chain([raw.len()]) {
                found |= t.feed(&raw[from..cut]) == Verdict::Conflict(3);
                from = cut;
            }
            proptest::prop_assert!(found);
        }

        /// Arbitrary bytes never panic the tracker.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let mut t = Tracker::default();
            let _ = t.feed(&bytes);
        }
    }
}
