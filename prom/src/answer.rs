//! Decoding the API's JSON: the envelope, the result types and sample values. Pure functions
//! over bytes, so that every shape a server may send is tested without a socket.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::Error;

/// A series' labels, `__name__` included when Prometheus sends it.
pub type Labels = BTreeMap<String, String>;

/// One value of an instant query.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series' labels (empty for a scalar result).
    pub labels: Labels,
    /// Evaluation time, Unix seconds.
    pub timestamp: f64,
    /// The value; may be NaN or ±Inf.
    pub value: f64,
}

/// One series of a range query.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeSeries {
    /// The series' labels.
    pub labels: Labels,
    /// `(Unix seconds, value)`, oldest first; values may be NaN or ±Inf.
    pub points: Vec<(f64, f64)>,
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<IgnoredAny>,
}

#[derive(Deserialize)]
struct QueryData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorItem {
    metric: Labels,
    #[serde(default)]
    value: Option<(f64, String)>,
}

#[derive(Deserialize)]
struct MatrixItem {
    metric: Labels,
    #[serde(default)]
    values: Option<Vec<(f64, String)>>,
}

/// Longest body excerpt kept in an error.
const EXCERPT: usize = 200;

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(EXCERPT)]);
    let text = text.trim();
    if body.len() > EXCERPT {
        format!("{text}...")
    } else {
        text.to_owned()
    }
}

fn malformed(status: u16, problem: impl Into<String>) -> Error {
    Error::Malformed {
        status,
        problem: problem.into(),
        source: None,
    }
}

fn json_error(status: u16, what: &str, e: serde_json::Error) -> Error {
    Error::Malformed {
        status,
        problem: format!("{what}: {e}"),
        source: Some(Arc::new(e)),
    }
}

/// The `data` of a successful answer, or the error the status and body mean.
pub(crate) fn envelope(status: u16, body: &[u8]) -> Result<serde_json::Value, Error> {
    let server_error = (500..600).contains(&status);
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(_) if server_error => {
            return Err(Error::Unavailable {
                status,
                error_type: None,
                message: excerpt(body),
            })
        }
        Err(e) if (200..300).contains(&status) => {
            return Err(json_error(status, "not a prometheus answer", e))
        }
        Err(_) => {
            return Err(malformed(
                status,
                format!("not a prometheus answer: {:?}", excerpt(body)),
            ))
        }
    };
    if envelope.status == "success" {
        if !(200..300).contains(&status) {
            return Err(malformed(status, "status \"success\" with an error code"));
        }
        if !envelope.warnings.is_empty() {
            tracing::debug!(
                warnings = envelope.warnings.len(),
                "prometheus answered with warnings"
            );
        }
        return envelope
            .data
            .ok_or_else(|| malformed(status, "\"success\" without data"));
    }
    if envelope.status != "error" {
        return Err(malformed(
            status,
            format!("unknown status {:?}", envelope.status),
        ));
    }
    let error_type = envelope.error_type.unwrap_or_default();
    let message = envelope.error.unwrap_or_default();
    // An execution error is the query's fault even when a server sends it with a 5xx.
    if server_error && error_type != "execution" {
        Err(Error::Unavailable {
            status,
            error_type: Some(error_type).filter(|t| !t.is_empty()),
            message,
        })
    } else {
        Err(Error::Rejected {
            status,
            error_type,
            message,
        })
    }
}

/// A sample value: a decimal number, `NaN`, `+Inf` or `-Inf`.
pub(crate) fn value(text: &str) -> Result<f64, Error> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        text => text
            .parse()
            .map_err(|_| malformed(200, format!("bad sample value {text:?}"))),
    }
}

fn query_data(data: serde_json::Value) -> Result<QueryData, Error> {
    serde_json::from_value(data).map_err(|e| json_error(200, "query data", e))
}

/// An instant query's data: a vector, or a scalar as one sample without labels.
pub(crate) fn instant(data: serde_json::Value) -> Result<Vec<Sample>, Error> {
    let data = query_data(data)?;
    match data.result_type.as_str() {
        "vector" => {
            let items: Vec<VectorItem> =
                serde_json::from_value(data.result).map_err(|e| json_error(200, "vector", e))?;
            items
                .into_iter()
                .map(|item| {
                    let (timestamp, v) = item.value.ok_or_else(|| {
                        malformed(
                            200,
                            "a sample without a float value (native histograms are not supported)",
                        )
                    })?;
                    Ok(Sample {
                        labels: item.metric,
                        timestamp,
                        value: value(&v)?,
                    })
                })
                .collect()
        }
        "scalar" => {
            let (timestamp, v): (f64, String) =
                serde_json::from_value(data.result).map_err(|e| json_error(200, "scalar", e))?;
            Ok(vec![Sample {
                labels: Labels::new(),
                timestamp,
                value: value(&v)?,
            }])
        }
        other => Err(Error::UnexpectedResult {
            expected: "an instant vector or a scalar",
            got: other.to_owned(),
        }),
    }
}

/// A range query's data: a matrix.
pub(crate) fn range(data: serde_json::Value) -> Result<Vec<RangeSeries>, Error> {
    let data = query_data(data)?;
    if data.result_type != "matrix" {
        return Err(Error::UnexpectedResult {
            expected: "a matrix",
            got: data.result_type,
        });
    }
    let items: Vec<MatrixItem> =
        serde_json::from_value(data.result).map_err(|e| json_error(200, "matrix", e))?;
    items
        .into_iter()
        .map(|item| {
            let values = item.values.ok_or_else(|| {
                malformed(
                    200,
                    "a series without float values (native histograms are not supported)",
                )
            })?;
            Ok(RangeSeries {
                labels: item.metric,
                points: values
                    .iter()
                    .map(|(t, v)| Ok((*t, value(v)?)))
                    .collect::<Result<_, Error>>()?,
            })
        })
        .collect()
}

/// A series listing's data: label sets.
pub(crate) fn series(data: serde_json::Value) -> Result<Vec<Labels>, Error> {
    serde_json::from_value(data).map_err(|e| json_error(200, "series", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_include_nan_and_infinities() {
        assert!(value("NaN").unwrap().is_nan());
        assert_eq!(value("+Inf").unwrap(), f64::INFINITY);
        assert_eq!(value("-Inf").unwrap(), f64::NEG_INFINITY);
        assert_eq!(value("1e3").unwrap(), 1000.0);
        assert_eq!(value("-0.25").unwrap(), -0.25);
        assert!(matches!(value("x"), Err(Error::Malformed { .. })));
        assert!(matches!(value(""), Err(Error::Malformed { .. })));
    }

    #[test]
    fn envelopes() {
        let ok = envelope(
            200,
            br#"{"status":"success","data":{"x":1},"warnings":["w"]}"#,
        );
        assert_eq!(ok.unwrap(), json!({"x": 1}));

        let bad = envelope(
            400,
            br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
        );
        match bad {
            Err(Error::Rejected {
                status,
                error_type,
                message,
            }) => assert_eq!(
                (status, error_type.as_str(), message.as_str()),
                (400, "bad_data", "parse error")
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            envelope(
                422,
                br#"{"status":"error","errorType":"execution","error":"e"}"#
            ),
            Err(Error::Rejected { status: 422, .. })
        ));
        assert!(matches!(
            envelope(
                503,
                br#"{"status":"error","errorType":"execution","error":"e"}"#
            ),
            Err(Error::Rejected { status: 503, .. })
        ));
        match envelope(
            503,
            br#"{"status":"error","errorType":"timeout","error":"slow"}"#,
        ) {
            Err(e @ Error::Unavailable { .. }) => {
                assert_eq!(
                    e.to_string(),
                    "prometheus unavailable: HTTP 503 (timeout): slow"
                );
                assert!(e.is_unavailable());
            }
            other => panic!("{other:?}"),
        }
        match envelope(502, b"<html>bad gateway</html>") {
            Err(Error::Unavailable {
                status: 502,
                error_type: None,
                message,
            }) => assert_eq!(message, "<html>bad gateway</html>"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn envelopes_that_are_not_prometheus_answers() {
        for (status, body) in [
            (200, &b"hello"[..]),
            (200, b""),
            (200, b"{\"status\":\"success\"}"),
            (200, b"{\"status\":\"maybe\"}"),
            (200, b"[1,2]"),
            (200, b"{\"status\":7}"),
            (404, b"404 page not found"),
            (401, b"{\"status\":\"success\",\"data\":1}"),
        ] {
            let e = envelope(status, body).unwrap_err();
            assert!(
                matches!(e, Error::Malformed { .. }),
                "{status} {body:?}: {e:?}"
            );
            assert!(!e.is_unavailable());
        }
        let long = vec![b'x'; 10_000];
        let Err(Error::Unavailable { message, .. }) = envelope(500, &long) else {
            panic!("a 5xx is unavailable")
        };
        assert_eq!(message.len(), EXCERPT + 3, "long bodies are cut");
        // Invalid UTF-8 is no reason to fail differently.
        assert!(matches!(
            envelope(500, &[0xff, 0xfe]),
            Err(Error::Unavailable { .. })
        ));
    }

    #[test]
    fn instant_vectors_and_scalars() {
        let vector = json!({"resultType": "vector", "result": [
            {"metric": {"__name__": "up", "job": "a"}, "value": [1700000000.5, "1"]},
            {"metric": {}, "value": [1700000000.5, "NaN"]},
            {"metric": {"job": "c"}, "value": [1700000000.5, "-Inf"]},
        ]});
        let samples = instant(vector).unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].labels["__name__"], "up");
        assert_eq!(samples[0].labels["job"], "a");
        assert_eq!(samples[0].timestamp, 1_700_000_000.5);
        assert_eq!(samples[0].value, 1.0);
        assert!(samples[1].value.is_nan());
        assert_eq!(samples[2].value, f64::NEG_INFINITY);

        let scalar = json!({"resultType": "scalar", "result": [12.0, "+Inf"]});
        assert_eq!(
            instant(scalar).unwrap(),
            vec![Sample {
                labels: Labels::new(),
                timestamp: 12.0,
                value: f64::INFINITY
            }]
        );
        let matrix = json!({"resultType": "matrix", "result": []});
        assert!(matches!(
            instant(matrix),
            Err(Error::UnexpectedResult { got, .. }) if got == "matrix"
        ));
    }

    #[test]
    fn instant_shapes_that_are_wrong_do_not_panic() {
        for data in [
            json!(null),
            json!({"resultType": "vector"}),
            json!({"resultType": "vector", "result": {}}),
            json!({"resultType": "vector", "result": [{"metric": {}}]}),
            json!({"resultType": "vector", "result": [{"metric": {}, "value": [1]}]}),
            json!({"resultType": "vector", "result": [{"metric": {"a": 1}, "value": [1, "1"]}]}),
            json!({"resultType": "vector", "result": [{"metric": {}, "value": ["t", "1"]}]}),
            json!({"resultType": "vector", "result": [{"metric": {}, "value": [1, 1]}]}),
            json!({"resultType": "vector", "result": [{"metric": {}, "value": [1, "one"]}]}),
            json!({"resultType": "vector", "result": [{"metric": {}, "histogram": [1, {}]}]}),
            json!({"resultType": "scalar", "result": "1"}),
        ] {
            let e = instant(data.clone()).unwrap_err();
            assert!(matches!(e, Error::Malformed { .. }), "{data}: {e:?}");
        }
    }

    #[test]
    fn matrices() {
        let matrix = json!({"resultType": "matrix", "result": [
            {"metric": {"job": "a"}, "values": [[1.0, "1"], [2.0, "NaN"], [3.0, "+Inf"]]},
            {"metric": {"job": "b"}, "values": []},
        ]});
        let series = range(matrix).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].labels["job"], "a");
        assert_eq!(series[0].points[0], (1.0, 1.0));
        assert!(series[0].points[1].1.is_nan());
        assert_eq!(series[0].points[2], (3.0, f64::INFINITY));
        assert!(series[1].points.is_empty());
        assert!(matches!(
            range(json!({"resultType": "vector", "result": []})),
            Err(Error::UnexpectedResult {
                expected: "a matrix",
                ..
            })
        ));
        assert!(matches!(
            range(
                json!({"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "x"]]}]})
            ),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn series_listings() {
        let listed = series(json!([{"__name__": "up", "job": "a"}, {"__name__": "x"}])).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[1]["__name__"], "x");
        assert!(matches!(
            series(json!({"__name__": "up"})),
            Err(Error::Malformed { .. })
        ));
    }
}
