//! Just enough gRPC over hyper's HTTP/2 to serve ADS with responses that are encoded once and
//! shared by every stream that gets them.
//!
//! tonic's generated server encodes each response into a per-stream buffer: with a thousand
//! streams receiving the same 12 KB of endpoints, that is a thousand encodings, a thousand
//! copies, and a thousand buffers that keep the size of the largest response for the life of
//! the stream. Here a response is a [`Message`]: a few bytes of its own (the gRPC length
//! prefix and the stream's nonce) followed by a reference-counted [`Bytes`] shared with the
//! other streams, written to the socket with one vectored write and never copied in user
//! space. Requests are still decoded by tonic ([`Streaming`]), with a small buffer.

use std::io::IoSlice;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, Streaming};
use tonic::Status;

/// Largest request accepted, bytes (a request naming many thousands of resources fits).
const MAX_REQUEST: usize = 16 << 20;

/// Initial size of a stream's request buffer, bytes: an ACK naming a few dozen resources fits,
/// and the buffer grows for larger ones.
const REQUEST_BUFFER: usize = 1024;

// === impl Message ===

/// One gRPC message on the wire: `head` (the 5-byte gRPC prefix and the fields that belong
/// to this stream), then `shared` (fields encoded once for many streams).
///
/// Both halves are protobuf encodings of the same message type; protobuf fields may come in
/// any order and concatenated encodings decode as one message, so the receiver sees a single
/// message with all the fields.
#[derive(Debug)]
pub(crate) struct Message {
    head: Bytes,
    shared: Bytes,
}

impl Message {
    /// A message whose encoding is `own` followed by `shared`.
    pub(crate) fn new(own: &[u8], shared: Bytes) -> Message {
        let len = own.len() + shared.len();
        let mut head = BytesMut::with_capacity(5 + own.len());
        head.put_u8(0); // not compressed
        head.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        head.put_slice(own);
        Message {
            head: head.freeze(),
            shared,
        }
    }

    /// Plain bytes (not a gRPC message), for non-gRPC responses.
    pub(crate) fn raw(bytes: Bytes) -> Message {
        Message {
            head: Bytes::new(),
            shared: bytes,
        }
    }
}

impl Buf for Message {
    fn remaining(&self) -> usize {
        self.head.len() + self.shared.len()
    }

    fn chunk(&self) -> &[u8] {
        if self.head.is_empty() {
            &self.shared
        } else {
            &self.head
        }
    }

    fn advance(&mut self, cnt: usize) {
        let from_head = cnt.min(self.head.len());
        self.head.advance(from_head);
        self.shared.advance(cnt - from_head);
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for part in [&self.head, &self.shared] {
            if n < dst.len() && !part.is_empty() {
                dst[n] = IoSlice::new(part);
                n += 1;
            }
        }
        n
    }
}

/// Appends protobuf field `field` holding the decimal digits of `value` (a nonce) to `out`.
pub(crate) fn put_decimal_field(out: &mut Vec<u8>, field: u8, value: u64) {
    let digits = value.to_string();
    out.push(field << 3 | 2); // length-delimited; fields 1..=15 take one byte
    out.push(digits.len() as u8); // at most 20 digits: one-byte varint
    out.extend_from_slice(digits.as_bytes());
}

// === impl ResponseBody ===

/// The body of every response the ADS endpoint gives: a gRPC response stream (messages from
/// the stream's task, then trailers carrying its status), or a whole body.
#[derive(Debug, Default)]
pub(crate) enum ResponseBody {
    /// Messages until the sender is dropped (status OK) or sends an error status.
    Grpc(mpsc::Receiver<Result<Message, Status>>),
    /// A whole body, e.g. the metrics text.
    Full(Option<Bytes>),
    /// Nothing left to send.
    #[default]
    Empty,
}

impl Body for ResponseBody {
    type Data = Message;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Message>, Self::Error>>> {
        let this = self.get_mut();
        match this {
            ResponseBody::Empty => Poll::Ready(None),
            ResponseBody::Full(bytes) => {
                let frame = bytes.take().map(|b| Ok(Frame::data(Message::raw(b))));
                *this = ResponseBody::Empty;
                Poll::Ready(frame)
            }
            ResponseBody::Grpc(rx) => match rx.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(Ok(Frame::data(message)))),
                Poll::Ready(end) => {
                    let status = match end {
                        Some(Err(status)) => status,
                        _ => Status::ok(""),
                    };
                    *this = ResponseBody::Empty;
                    Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ResponseBody::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Empty => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that cannot be a header value gets here: send the code alone.
        map.insert("grpc-status", HeaderValue::from(status.code() as i32));
    }
    map
}

/// The response that starts a gRPC stream whose messages come from `rx`.
pub(crate) fn stream_response(
    rx: mpsc::Receiver<Result<Message, Status>>,
) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(ResponseBody::Grpc(rx));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A response that is only a status (gRPC's "trailers-only" form).
pub(crate) fn status_response(status: Status) -> http::Response<ResponseBody> {
    status.into_http()
}

// === requests ===

/// Decodes the request stream of a gRPC call whose messages are `T`.
pub(crate) fn requests<T>(
    request: http::Request<hyper::body::Incoming>,
) -> Result<Streaming<T>, Status>
where
    T: prost::Message + Default + Send + 'static,
{
    if let Some(encoding) = request.headers().get("grpc-encoding") {
        if encoding != "identity" {
            return Err(Status::unimplemented(
                "compressed requests are not supported (grpc-encoding must be identity)",
            ));
        }
    }
    Ok(Streaming::new_request(
        ProstDecoder(PhantomData),
        request.into_body(),
        None,
        Some(MAX_REQUEST),
    ))
}

struct ProstDecoder<T>(PhantomData<fn() -> T>);

impl<T: prost::Message + Default> Decoder for ProstDecoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        T::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(REQUEST_BUFFER, 32 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gofe_proto::wire::DiscoveryResponse;
    use prost::Message as _;

    #[test]
    fn a_message_in_two_parts_decodes_as_one() {
        let shared = DiscoveryResponse {
            version_info: "v1".into(),
            type_url: "t".into(),
            ..Default::default()
        };
        let mut own = Vec::new();
        put_decimal_field(&mut own, 5, 42);
        let mut m = Message::new(&own, Bytes::from(shared.encode_to_vec()));
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(m.chunks_vectored(&mut slices), 2);
        let wire = m.copy_to_bytes(m.remaining());
        assert_eq!(wire[0], 0);
        let len = u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize;
        assert_eq!(len, wire.len() - 5);
        let decoded = DiscoveryResponse::decode(&wire[5..]).unwrap();
        assert_eq!(decoded.nonce, "42");
        assert_eq!(decoded.version_info, "v1");
        assert_eq!(decoded.type_url, "t");
    }

    #[test]
    fn advancing_crosses_from_head_to_shared() {
        let mut m = Message::new(b"ab", Bytes::from_static(b"cd"));
        m.advance(6);
        assert_eq!(m.chunk(), b"b");
        m.advance(2);
        assert_eq!(m.chunk(), b"d");
        assert_eq!(m.remaining(), 1);
    }
}
