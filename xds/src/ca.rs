//! The mesh CA's `CreateCertificate` method, served beside ADS on the xDS port.
//!
//! A workload without a certificate yet (a proxy at its first start) must be able to call it,
//! so with mutual TLS the port lets a client in without a certificate at the TLS layer
//! ([`crate::ServerTlsFiles::require_client_certificate`] `false`) and ADS itself refuses
//! streams without one ([`crate::ServerOptions::require_identity`]). Who may have which
//! certificate is the [`CertificateAuthority`]'s call (the controller's mesh CA): this module
//! only decodes the request, takes the bearer token from `authorization`, and counts and logs
//! the outcome in `gofe_ca_certificate_requests_total{result}`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gofe_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use prost::Message as _;
use tonic::{Code, Status};

use crate::grpc::{self, Message, ResponseBody};
use crate::server::{AdsServer, PeerCertificate};

/// One certificate request, as the authority sees it.
#[derive(Clone, Debug)]
pub struct CertificateRequest {
    /// The PKCS#10 CSR, PEM, as sent.
    pub csr: String,
    /// The lifetime asked for (`None`: the authority's default).
    pub validity: Option<Duration>,
    /// The bearer token of the `authorization` header (`Bearer TOKEN`), if any.
    pub token: Option<String>,
    /// The client certificate of the connection, if it presented one.
    pub peer: Option<PeerCertificate>,
}

/// The future a [`CertificateAuthority`] answers with.
pub type IssueFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<String>, Status>> + Send + 'a>>;

/// Who decides and signs: the controller's mesh CA.
pub trait CertificateAuthority: Send + Sync + 'static {
    /// The PEM chain for `request` (leaf first, root last), or why not: `UNAUTHENTICATED` for a
    /// missing or bad token, `INVALID_ARGUMENT` for a CSR that cannot be read or asks for a name
    /// the token does not grant, `INTERNAL` when signing fails.
    fn issue(&self, request: CertificateRequest) -> IssueFuture<'_>;
}

/// A shared authority.
pub type SharedAuthority = Arc<dyn CertificateAuthority>;

/// The metric label of a refusal's code.
fn result_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "issued",
        Code::Unauthenticated => "unauthenticated",
        Code::InvalidArgument => "invalid_argument",
        Code::PermissionDenied => "permission_denied",
        Code::Unimplemented => "unimplemented",
        _ => "error",
    }
}

/// The bearer token of `authorization: Bearer TOKEN` (the scheme case-insensitive).
fn bearer(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

impl AdsServer {
    /// Answers one `CreateCertificate` call.
    pub(crate) async fn create_certificate(
        &self,
        request: http::Request<hyper::body::Incoming>,
        peer: Option<PeerCertificate>,
    ) -> http::Response<ResponseBody> {
        let outcome = self.issue(request, peer).await;
        let label = result_label(outcome.as_ref().map_or_else(Status::code, |_| Code::Ok));
        self.inner
            .metrics
            .ca_requests
            .with_label_values(&[label])
            .inc();
        match outcome {
            Ok(chain) => {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let body = IstioCertificateResponse { cert_chain: chain }.encode_to_vec();
                // The channel has room for the one message; the receiver is the response body.
                let _ = tx.try_send(Ok(Message::new(&[], Bytes::from(body))));
                grpc::stream_response(rx)
            }
            Err(status) => grpc::status_response(status),
        }
    }

    async fn issue(
        &self,
        request: http::Request<hyper::body::Incoming>,
        peer: Option<PeerCertificate>,
    ) -> Result<Vec<String>, Status> {
        let Some(authority) = self.inner.authority.clone() else {
            return Err(Status::unimplemented(
                "this control plane has no mesh CA (identity is not configured)",
            ));
        };
        let token = bearer(request.headers());
        let mut messages = grpc::requests::<IstioCertificateRequest>(request)?;
        let Some(message) = messages.message().await? else {
            return Err(Status::invalid_argument("no request message"));
        };
        let validity = u64::try_from(message.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let outcome = authority
            .issue(CertificateRequest {
                csr: message.csr,
                validity,
                token,
                peer,
            })
            .await;
        if let Err(status) = &outcome {
            tracing::warn!(code = ?status.code(), error = %status.message(), "certificate request refused");
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_read_from_authorization_only() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        h.insert("authorization", "bearer  xyz ".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("xyz"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn every_refusal_code_has_its_label() {
        assert_eq!(result_label(Code::Ok), "issued");
        assert_eq!(result_label(Code::Unauthenticated), "unauthenticated");
        assert_eq!(result_label(Code::InvalidArgument), "invalid_argument");
        assert_eq!(result_label(Code::Internal), "error");
    }
}
