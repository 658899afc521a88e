//! Trace context on the wire: W3C `traceparent` and B3 (single `b3` and multi `x-b3-*`
//! headers), read from bytes and written into fixed buffers (no allocation either way).
//!
//! Reading is strict where the specifications are (W3C: lowercase hex, no all-zero ids,
//! version `ff` invalid, version 00 exactly 55 characters) and returns `None` for anything
//! else, so that a malformed header starts a new trace instead of continuing a broken one.

/// A 16-byte trace id (never all zero when read or made here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id (never all zero when read or made here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random, non-zero trace id.
    pub fn random() -> Self {
        let hi = fastrand::u64(..);
        let lo = fastrand::u64(1..);
        let mut id = [0; 16];
        id[..8].copy_from_slice(&hi.to_be_bytes());
        id[8..].copy_from_slice(&lo.to_be_bytes());
        TraceId(id)
    }

    /// Lowercase hex, 32 characters.
    pub fn to_hex(&self) -> String {
        let mut out = [0; 32];
        hex_into(&self.0, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl SpanId {
    /// A random, non-zero span id.
    pub fn random() -> Self {
        SpanId(fastrand::u64(1..).to_be_bytes())
    }

    /// Lowercase hex, 16 characters.
    pub fn to_hex(&self) -> String {
        let mut out = [0; 16];
        hex_into(&self.0, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A context read from a request: whose child the request is, and whether it is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span.
    pub span_id: SpanId,
    /// The caller's sampling decision.
    pub sampled: bool,
}

/// What B3 headers said: a full context, or only a sampling decision (`b3: 0`, or
/// `x-b3-sampled` alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B3 {
    /// Trace and span ids, with a decision when one was sent.
    Context {
        /// The trace (a 64-bit B3 trace id is left-padded with zeros).
        trace_id: TraceId,
        /// The caller's span.
        span_id: SpanId,
        /// `Some(true)` for `1` or `d` (debug), `Some(false)` for `0`, `None` when deferred.
        sampled: Option<bool>,
    },
    /// No context, only a decision.
    Decision(bool),
}

// === W3C traceparent ===

/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// Reads a `traceparent` value: `version-traceid-parentid-flags`. A future version is read
/// by its version-00 prefix, as the specification asks.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_byte(value[0], value[1])?;
    if version == 0xff {
        return None;
    }
    if version == 0 && value.len() != TRACEPARENT_LEN {
        return None;
    }
    if version != 0 && value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut trace = [0; 16];
    let mut span = [0; 8];
    unhex_into(&value[3..35], &mut trace)?;
    unhex_into(&value[36..52], &mut span)?;
    let flags = hex_byte(value[53], value[54])?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id: TraceId(trace),
        span_id: SpanId(span),
        sampled: flags & 1 == 1,
    })
}

/// A version-00 `traceparent` for a child whose parent is `span`.
pub fn format_traceparent(trace: &TraceId, span: &SpanId, sampled: bool) -> [u8; TRACEPARENT_LEN] {
    let mut out = [b'-'; TRACEPARENT_LEN];
    out[0] = b'0';
    out[1] = b'0';
    hex_into(&trace.0, &mut out[3..35]);
    hex_into(&span.0, &mut out[36..52]);
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    out
}

// === B3 ===

/// Length of a `b3` single header gofe writes: `{trace:32}-{span:16}-{0|1}`.
pub const B3_SINGLE_LEN: usize = 32 + 1 + 16 + 2;

/// Reads a `b3` single header: `{trace}-{span}[-{sampled}[-{parent}]]`, or a decision alone
/// (`0`, `1`, `d`).
pub fn parse_b3_single(value: &[u8]) -> Option<B3> {
    if value.len() == 1 {
        return decision(value).map(B3::Decision);
    }
    let mut parts = value.split(|&b| b == b'-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = b3_span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(d) => Some(decision(d)?),
    };
    if let Some(parent) = parts.next() {
        b3_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(B3::Context {
        trace_id,
        span_id,
        sampled,
    })
}

/// Reads B3's multiple headers (`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`,
/// `x-b3-flags`); `x-b3-flags: 1` (debug) means sampled.
pub fn parse_b3_multi(
    trace: Option<&[u8]>,
    span: Option<&[u8]>,
    sampled: Option<&[u8]>,
    flags: Option<&[u8]>,
) -> Option<B3> {
    let decided = if flags == Some(b"1") {
        Some(true)
    } else {
        match sampled {
            None => None,
            Some(b"true") => Some(true),
            Some(b"false") => Some(false),
            Some(s) => Some(decision(s)?),
        }
    };
    match (trace, span) {
        (Some(t), Some(s)) => Some(B3::Context {
            trace_id: b3_trace_id(t)?,
            span_id: b3_span_id(s)?,
            sampled: decided,
        }),
        (None, None) => decided.map(B3::Decision),
        _ => None,
    }
}

/// A `b3` single header for a child whose parent is `span`.
pub fn format_b3_single(trace: &TraceId, span: &SpanId, sampled: bool) -> [u8; B3_SINGLE_LEN] {
    let mut out = [b'-'; B3_SINGLE_LEN];
    hex_into(&trace.0, &mut out[..32]);
    hex_into(&span.0, &mut out[33..49]);
    out[50] = if sampled { b'1' } else { b'0' };
    out
}

/// The 32 hex characters of `trace` (for `x-b3-traceid`).
pub fn format_trace_hex(trace: &TraceId) -> [u8; 32] {
    let mut out = [0; 32];
    hex_into(&trace.0, &mut out);
    out
}

/// The 16 hex characters of `span` (for `x-b3-spanid`).
pub fn format_span_hex(span: &SpanId) -> [u8; 16] {
    let mut out = [0; 16];
    hex_into(&span.0, &mut out);
    out
}

fn decision(d: &[u8]) -> Option<bool> {
    match d {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

fn b3_trace_id(hex: &[u8]) -> Option<TraceId> {
    let mut id = [0; 16];
    match hex.len() {
        32 => unhex_into_any_case(hex, &mut id)?,
        16 => unhex_into_any_case(hex, &mut id[8..])?,
        _ => return None,
    }
    (id != [0; 16]).then_some(TraceId(id))
}

fn b3_span_id(hex: &[u8]) -> Option<SpanId> {
    let mut id = [0; 8];
    if hex.len() != 16 {
        return None;
    }
    unhex_into_any_case(hex, &mut id)?;
    (id != [0; 8]).then_some(SpanId(id))
}

// === hex ===

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// Lowercase only (W3C).
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(nibble(hi)? << 4 | nibble(lo)?)
}

fn unhex_into(hex: &[u8], out: &mut [u8]) -> Option<()> {
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = hex_byte(pair[0], pair[1])?;
    }
    Some(())
}

/// B3 ids are hex in either case.
fn unhex_into_any_case(hex: &[u8], out: &mut [u8]) -> Option<()> {
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = hex_byte(pair[0].to_ascii_lowercase(), pair[1].to_ascii_lowercase())?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_reads_the_specifications_example_and_writes_it_back() {
        let p = parse_traceparent(TP).unwrap();
        assert_eq!(p.trace_id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_id.to_hex(), "00f067aa0ba902b7");
        assert!(p.sampled);
        assert_eq!(&format_traceparent(&p.trace_id, &p.span_id, true)[..], TP);
        let unsampled = format_traceparent(&p.trace_id, &p.span_id, false);
        assert!(!parse_traceparent(&unsampled).unwrap().sampled);
    }

    #[test]
    fn traceparent_refuses_what_the_specification_refuses() {
        let future = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parse_traceparent(future).is_some());
        for bad in [
            &b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            b"",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn b3_single_and_multi() {
        let t = "80f198ee56343ba864fe8b2a57d3eff7";
        let s = "e457b5a2e4d86bd1";
        let full = format!("{t}-{s}-1-05e3ac9a4f6e3b90");
        let B3::Context {
            trace_id,
            span_id,
            sampled,
        } = parse_b3_single(full.as_bytes()).unwrap()
        else {
            panic!("a context");
        };
        assert_eq!(
            (
                trace_id.to_hex().as_str(),
                span_id.to_hex().as_str(),
                sampled
            ),
            (t, s, Some(true))
        );
        assert_eq!(
            &format_b3_single(&trace_id, &span_id, true)[..],
            format!("{t}-{s}-1").as_bytes()
        );
        let short = parse_b3_single(b"64fe8b2a57d3eff7-E457B5A2E4D86BD1").unwrap();
        let B3::Context {
            trace_id, sampled, ..
        } = short
        else {
            panic!("a context");
        };
        assert_eq!(trace_id.to_hex(), "000000000000000064fe8b2a57d3eff7");
        assert_eq!(sampled, None);
        assert_eq!(parse_b3_single(b"0"), Some(B3::Decision(false)));
        assert_eq!(parse_b3_single(b"d"), Some(B3::Decision(true)));
        for bad in [
            &b"x"[..],
            b"abc-def",
            b"",
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
        ] {
            assert!(parse_b3_single(bad).is_none());
        }
        assert_eq!(
            parse_b3_multi(Some(t.as_bytes()), Some(s.as_bytes()), Some(b"0"), None),
            Some(B3::Context {
                trace_id: b3_trace_id(t.as_bytes()).unwrap(),
                span_id: b3_span_id(s.as_bytes()).unwrap(),
                sampled: Some(false)
            })
        );
        assert_eq!(
            parse_b3_multi(None, None, Some(b"0"), Some(b"1")),
            Some(B3::Decision(true))
        );
        assert_eq!(parse_b3_multi(Some(t.as_bytes()), None, None, None), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let _ = parse_traceparent(&bytes);
            let _ = parse_b3_single(&bytes);
            let _ = parse_b3_multi(Some(&bytes), Some(&bytes), Some(&bytes), None);
        }
    }
}
