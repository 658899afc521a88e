//! The mesh CA's certificate service: how a workload (gofe's proxy, or an Istio-style agent)
//! asks the controller for its certificate.
//!
//! The shape is Istio's `istio.v1.auth.IstioCertificateService` (security/proto/
//! istioca.proto): same package, service, method, message names and field numbers, so the
//! bytes interoperate with Istio's agents.
//!
//! ```text
//!   IstioCertificateRequest  { csr = 1 (PEM PKCS#10), validity_duration = 3 (seconds) }
//!        ══ CreateCertificate (unary; authorization: Bearer TOKEN) ══▶
//!   IstioCertificateResponse { cert_chain = 1 (PEM: the leaf first, the root last) }
//! ```
//!
//! Istio's `metadata` (field 4, a `google.protobuf.Struct` carrying impersonation requests) is
//! not declared: gofe grants no impersonation, and an unknown field is skipped by the decoder.

/// The gRPC path of `CreateCertificate`.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// A certificate signing request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// The PKCS#10 CSR, PEM.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// The lifetime asked for, seconds; the CA may give less. Zero or negative: the CA's
    /// default.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
}

/// The certificate issued.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates: the workload's own first, then any intermediates, the root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn requests_and_responses_keep_istios_field_numbers() {
        let r = IstioCertificateRequest {
            csr: "x".into(),
            validity_duration: 60,
        };
        // csr = 1 (length-delimited), validity_duration = 3 (varint).
        assert_eq!(r.encode_to_vec(), vec![0x0a, 1, b'x', 0x18, 60]);
        let mut with_metadata = r.encode_to_vec();
        with_metadata.extend_from_slice(&[0x22, 0]); // an empty Struct at field 4
        assert_eq!(
            IstioCertificateRequest::decode(&with_metadata[..]).unwrap(),
            r
        );
        let resp = IstioCertificateResponse {
            cert_chain: vec!["a".into(), "b".into()],
        };
        assert_eq!(resp.encode_to_vec(), vec![0x0a, 1, b'a', 0x0a, 1, b'b']);
    }
}
