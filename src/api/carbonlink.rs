//! CarbonLink, carbon's cache query protocol, as carbon-cache 1.1.10 answers it
//! (`CacheManagementHandler` in `lib/carbon/protocols.py`, `getMetadata`/`setMetadata`
//! in `lib/carbon/management.py` and `lib/carbon/database.py`) and graphite-web 1.1.10
//! asks it (`webapp/graphite/carbonlink.py` with `CARBONLINK_HOSTS`).
//!
//! Frames both ways are a 4-byte big-endian length and a pickle
//! ([`pickle::split_frame`] splits them). Requests are pickled dicts (graphite-web uses
//! `CARBONLINK_PICKLE_PROTOCOL = -1`, protocol 5; any protocol loads):
//! - `{'type': 'cache-query', 'metric': name}` → `{'datapoints': [(ts, value), ...]}`;
//! - `{'type': 'cache-query-bulk', 'metrics': [name, ...]}` →
//!   `{'datapointsByMetric': {name: [(ts, value), ...]}}` (carbon has it; graphite-web
//!   1.1.10 never sends it);
//! - `{'type': 'get-metadata', 'metric': name, 'key': 'aggregationMethod'}` →
//!   `{'value': 'average'}`;
//! - `{'type': 'set-metadata', 'metric': name, 'key': 'aggregationMethod', 'value':
//!   'max'}` → `{'old_value': 'average', 'new_value': 'max'}`;
//! - any other type → `{'error': 'Invalid request type "x"'}`, and a metadata failure
//!   (another key, no file, an unknown method) → `{'error': message}` (carbon puts a
//!   python traceback there; graphite-web only raises it as `CarbonLinkRequestError`).
//!
//! Responses are pickled with protocol 2, as carbon's `pickle.dumps(result,
//! protocol=2)`, in the same bytes. Timestamps are written as floats: carbon's cache
//! holds the `float(timestamp)` its receivers made (`MIN_TIMESTAMP_RESOLUTION = 0`), so
//! for whole-second timestamps the bytes are carbon's own.
//!
//! A request that is not such a dict (no `type`, a `metric` that is not a str, a pickle
//! that does not load) is a [`RequestError`]: carbon's handler raises on those and
//! Twisted drops the connection, which the caller should do too, counting the reason.
//!
//! Everything here is pure except [`answer_metadata`], which reads or rewrites one
//! whisper header (std fs, for the blocking pool).
//!
//! How this is checked: the tests below hold the bytes python writes for graphite-web's
//! requests and carbon's responses; `tests/it/read_api.rs` also loads every response
//! with python's pickle.

use std::path::Path;

use crate::protocol::pickle::{self, Decoder, Reject, Value, Writer};
use crate::store::whisper::format::AggregationMethod;
use crate::store::whisper::path::metric_path;
use crate::store::whisper::render::{aggregation_method, set_aggregation_method};

/// A bound on request frames. carbon allows 1 GiB (`MAX_LENGTH = 1024 ** 3`, commented
/// "1mb"); graphite-web's requests are a few hundred bytes, so 1 MiB is generous.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 1 << 20;

/// The one metadata key carbon's whisper database supports.
pub const AGGREGATION_METHOD_KEY: &str = "aggregationMethod";

/// A CarbonLink request, borrowing from the frame and the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'s> {
    /// The cached points of one metric.
    CacheQuery {
        /// The metric name.
        metric: &'s str,
    },
    /// The cached points of several metrics.
    CacheQueryBulk {
        /// The metric names, in request order.
        metrics: Vec<&'s str>,
    },
    /// A metadata value.
    GetMetadata {
        /// The metric name.
        metric: &'s str,
        /// The key (carbon knows `aggregationMethod` only).
        key: &'s str,
    },
    /// Change a metadata value.
    SetMetadata {
        /// The metric name.
        metric: &'s str,
        /// The key.
        key: &'s str,
        /// The new value; `None` when the request's value is not a str (no method
        /// has such a name).
        value: Option<&'s str>,
    },
    /// A type carbon does not know; answer [`invalid_type_message`].
    Unknown {
        /// The request's type.
        kind: &'s str,
    },
}

/// Why a request frame is not a request (carbon raises and drops the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The pickle does not load (see [`Reject`]).
    #[error("the request does not unpickle: {}", .0.as_str())]
    Pickle(Reject),
    /// It loads, but not to a dict.
    #[error("the request is not a dict")]
    NotADict,
    /// A key the type needs is missing, or its value is not a str (a list of str for
    /// `metrics`).
    #[error("the request's {0:?} is missing or not a str")]
    Field(&'static str),
}

impl RequestError {
    /// A stable name to count by.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestError::Pickle(r) => r.as_str(),
            RequestError::NotADict => "not_a_dict",
            RequestError::Field(_) => "bad_field",
        }
    }
}

/// Decode a request frame's pickle (without its length prefix).
pub fn decode_request<'s>(
    decoder: &'s mut Decoder,
    pickle: &'s [u8],
) -> Result<Request<'s>, RequestError> {
    let request = decoder.load(pickle).map_err(RequestError::Pickle)?;
    if !request.is_dict() {
        return Err(RequestError::NotADict);
    }
    let text = |key: &'static str| -> Result<&'s str, RequestError> {
        request
            .get(key)
            .and_then(|v| v.as_str())
            .ok_or(RequestError::Field(key))
    };
    Ok(match text("type")? {
        "cache-query" => Request::CacheQuery {
            metric: text("metric")?,
        },
        "cache-query-bulk" => {
            let list = request
                .get("metrics")
                .and_then(|m| m.items())
                .ok_or(RequestError::Field("metrics"))?;
            let metrics = list
                .map(|m: Value<'s>| m.as_str())
                .collect::<Option<Vec<_>>>()
                .ok_or(RequestError::Field("metrics"))?;
            Request::CacheQueryBulk { metrics }
        }
        "get-metadata" => Request::GetMetadata {
            metric: text("metric")?,
            key: text("key")?,
        },
        "set-metadata" => Request::SetMetadata {
            metric: text("metric")?,
            key: text("key")?,
            value: match request.get("value") {
                Some(v) => v.as_str(),
                None => return Err(RequestError::Field("value")),
            },
        },
        kind => Request::Unknown { kind },
    })
}

/// carbon's message for a request type it does not know.
pub fn invalid_type_message(kind: &str) -> String {
    format!("Invalid request type \"{kind}\"")
}

/// Writes one response frame: a length prefix and a protocol-2 pickle.
fn frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Writer<'_>)) {
    let start = out.len();
    out.extend_from_slice(&[0; pickle::HEADER_BYTES]);
    let mut w = Writer::new(out);
    body(&mut w);
    w.finish();
    let len = u32::try_from(out.len() - start - pickle::HEADER_BYTES).expect("a frame under 4 GiB");
    out[start..start + pickle::HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
}

fn datapoints(w: &mut Writer<'_>, points: &[(i64, f64)]) {
    w.list(points.iter(), |w, &(ts, value)| {
        w.tuple(2, |w| {
            w.float(ts as f64);
            w.float(value);
        })
    });
}

/// `{'datapoints': [(ts, value), ...]}`, the answer to a cache query; `points` in the
/// cache's order.
pub fn encode_datapoints(points: &[(i64, f64)], out: &mut Vec<u8>) {
    frame(out, |w| {
        w.dict(std::iter::once(()), |w, ()| {
            w.shared_str("datapoints");
            datapoints(w, points);
        })
    });
}

/// `{'datapointsByMetric': {name: [(ts, value), ...]}}`, the answer to a bulk cache
/// query. A name asked twice is one entry, at its first place, as in carbon's dict.
pub fn encode_datapoints_by_metric(metrics: &[(&str, &[(i64, f64)])], out: &mut Vec<u8>) {
    let mut unique: Vec<(&str, &[(i64, f64)])> = Vec::with_capacity(metrics.len());
    for &(name, points) in metrics {
        if !unique.iter().any(|(n, _)| *n == name) {
            unique.push((name, points));
        }
    }
    frame(out, |w| {
        w.dict(std::iter::once(()), |w, ()| {
            w.shared_str("datapointsByMetric");
            w.dict(unique.iter(), |w, &(name, points)| {
                w.str(name);
                datapoints(w, points);
            });
        })
    });
}

/// `{'value': value}`, the answer to get-metadata.
pub fn encode_metadata_value(value: &str, out: &mut Vec<u8>) {
    frame(out, |w| {
        w.dict(std::iter::once(()), |w, ()| {
            w.shared_str("value");
            w.str(value);
        })
    });
}

/// `{'old_value': old, 'new_value': new}`, the answer to set-metadata.
pub fn encode_set_metadata(old: &str, new: &str, out: &mut Vec<u8>) {
    frame(out, |w| {
        w.dict(0..2, |w, i| {
            if i == 0 {
                w.shared_str("old_value");
                w.str(old);
            } else {
                w.shared_str("new_value");
                w.str(new);
            }
        })
    });
}

/// `{'error': message}`.
pub fn encode_error(message: &str, out: &mut Vec<u8>) {
    frame(out, |w| {
        w.dict(std::iter::once(()), |w, ()| {
            w.shared_str("error");
            w.str(message);
        })
    });
}

/// Answer a get-metadata or set-metadata request for the whisper tree at `root` as
/// carbon's `WhisperDatabase` does, writing the response frame to `out`. Returns false
/// (and writes nothing) for other requests. Reads or rewrites the file's header.
pub fn answer_metadata(root: &Path, request: &Request<'_>, out: &mut Vec<u8>) -> bool {
    let (metric, key, value) = match *request {
        Request::GetMetadata { metric, key } => (metric, key, None),
        Request::SetMetadata { metric, key, value } => (metric, key, Some(value)),
        _ => return false,
    };
    if key != AGGREGATION_METHOD_KEY {
        encode_error(&format!("Unsupported metadata key \"{key}\""), out);
        return true;
    }
    let path = match metric_path(root, metric) {
        Ok(path) => path,
        Err(reason) => {
            encode_error(&format!("invalid metric name {metric:?}: {reason}"), out);
            return true;
        }
    };
    match value {
        None => match aggregation_method(&path) {
            Ok(method) => encode_metadata_value(method.name(), out),
            Err(e) => encode_error(&format!("{metric}: {e}"), out),
        },
        Some(value) => {
            let Some(method) = value.and_then(AggregationMethod::from_name) else {
                let shown = value.unwrap_or("<not a str>");
                encode_error(&format!("Unrecognized aggregation method: {shown}"), out);
                return true;
            };
            match set_aggregation_method(&path, method) {
                Ok(old) => encode_set_metadata(old.name(), method.name(), out),
                Err(e) => encode_error(&format!("{metric}: {e}"), out),
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::pickle::{split_frame, Framed};

    fn check(pickle: &[u8], want: Result<Request<'_>, RequestError>) {
        let mut decoder = Decoder::default();
        assert_eq!(decode_request(&mut decoder, pickle), want, "{pickle:?}");
    }

    #[test]
    fn graphite_webs_requests() {
        // python3 -c "import pickle; print(pickle.dumps(dict(type='cache-query', metric='a.b.c'), protocol=-1))"
        // (graphite-web's CarbonLinkPool.query with CARBONLINK_PICKLE_PROTOCOL = -1)
        check(b"\x80\x05\x95+\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04type\x94\x8c\x0bcache-query\x94\x8c\x06metric\x94\x8c\x05a.b.c\x94u.",
            Ok(Request::CacheQuery { metric: "a.b.c" })
        );
        // ... dict(type='get-metadata', metric='a.b', key='aggregationMethod')
        check(b"\x80\x05\x95D\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04type\x94\x8c\x0cget-metadata\x94\x8c\x06metric\x94\x8c\x03a.b\x94\x8c\x03key\x94\x8c\x11aggregationMethod\x94u.",
            Ok(Request::GetMetadata { metric: "a.b", key: "aggregationMethod" })
        );
        // ... dict(type='set-metadata', metric='a.b', key='aggregationMethod', value='max')
        check(b"\x80\x05\x95R\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04type\x94\x8c\x0cset-metadata\x94\x8c\x06metric\x94\x8c\x03a.b\x94\x8c\x03key\x94\x8c\x11aggregationMethod\x94\x8c\x05value\x94\x8c\x03max\x94u.",
            Ok(Request::SetMetadata { metric: "a.b", key: "aggregationMethod", value: Some("max") })
        );
        // python3 -c "import pickle; print(pickle.dumps(dict(type='cache-query-bulk', metrics=['a.b', 'cd']), protocol=2))"
        check(b"\x80\x02}q\x00(X\x04\x00\x00\x00typeq\x01X\x10\x00\x00\x00cache-query-bulkq\x02X\x07\x00\x00\x00metricsq\x03]q\x04(X\x03\x00\x00\x00a.bq\x05X\x02\x00\x00\x00cdq\x06eu.",
            Ok(Request::CacheQueryBulk { metrics: vec!["a.b", "cd"] })
        );
    }

    #[test]
    fn malformed_requests() {
        // {'type': 'nope'}
        check(
            b"\x80\x02}X\x04\x00\x00\x00typeX\x04\x00\x00\x00nopes.",
            Ok(Request::Unknown { kind: "nope" }),
        );
        check(b"\x80\x02].", Err(RequestError::NotADict));
        check(b"\x80\x02}.", Err(RequestError::Field("type")));
        // {'type': 'cache-query'} and {'type': 'cache-query', 'metric': 5}
        check(
            b"\x80\x02}X\x04\x00\x00\x00typeX\x0b\x00\x00\x00cache-querys.",
            Err(RequestError::Field("metric")),
        );
        check(b"\x80\x02}(X\x04\x00\x00\x00typeX\x0b\x00\x00\x00cache-queryX\x06\x00\x00\x00metricK\x05u.",
            Err(RequestError::Field("metric"))
        );
        check(b"\x80\x02}", Err(RequestError::Pickle(Reject::Truncated)));
        check(
            b"\x80\x02cos\nsystem\n.",
            Err(RequestError::Pickle(Reject::BadOpcode)),
        );
        assert_eq!(RequestError::Field("type").as_str(), "bad_field");
    }

    fn body(out: &[u8]) -> &[u8] {
        match split_frame(out, FRAME_BYTES_MAX_DEFAULT) {
            Framed::Frame { pickle, consumed } => {
                assert_eq!(consumed, out.len());
                pickle
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn carbons_responses() {
        // Each expected body: python3 -c "import pickle; print(pickle.dumps(<result>, protocol=2))",
        // <result> as carbon's CacheManagementHandler builds it.
        let mut out = Vec::new();
        encode_datapoints(&[(1700000000, 1.5), (1700000010, -2.0)], &mut out);
        assert_eq!(body(&out), b"\x80\x02}q\x00X\n\x00\x00\x00datapointsq\x01]q\x02(GA\xd9T\xfc@\x00\x00\x00G?\xf8\x00\x00\x00\x00\x00\x00\x86q\x03GA\xd9T\xfcB\x80\x00\x00G\xc0\x00\x00\x00\x00\x00\x00\x00\x86q\x04es.");
        out.clear();
        encode_datapoints(&[], &mut out);
        assert_eq!(
            body(&out),
            b"\x80\x02}q\x00X\n\x00\x00\x00datapointsq\x01]q\x02s."
        );
        out.clear();
        let one: &[(i64, f64)] = &[(1700000000, 1.5)];
        encode_datapoints_by_metric(&[("a.b", one), ("cd", &[]), ("a.b", one)], &mut out);
        assert_eq!(body(&out), b"\x80\x02}q\x00X\x12\x00\x00\x00datapointsByMetricq\x01}q\x02(X\x03\x00\x00\x00a.bq\x03]q\x04GA\xd9T\xfc@\x00\x00\x00G?\xf8\x00\x00\x00\x00\x00\x00\x86q\x05aX\x02\x00\x00\x00cdq\x06]q\x07us.");
        out.clear();
        encode_metadata_value("average", &mut out);
        assert_eq!(
            body(&out),
            b"\x80\x02}q\x00X\x05\x00\x00\x00valueq\x01X\x07\x00\x00\x00averageq\x02s."
        );
        out.clear();
        encode_set_metadata("average", "max", &mut out);
        assert_eq!(body(&out), b"\x80\x02}q\x00(X\t\x00\x00\x00old_valueq\x01X\x07\x00\x00\x00averageq\x02X\t\x00\x00\x00new_valueq\x03X\x03\x00\x00\x00maxq\x04u.");
        out.clear();
        encode_error(&invalid_type_message("nope"), &mut out);
        assert_eq!(body(&out), b"\x80\x02}q\x00X\x05\x00\x00\x00errorq\x01X\x1b\x00\x00\x00Invalid request type \"nope\"q\x02s.");
    }

    #[test]
    fn metadata_answers() {
        use crate::store::whisper::format::{self, CreateMode};
        use crate::store::whisper::io::FileIo;
        let root = std::env::temp_dir().join(format!("cadent-carbonlink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let path = metric_path(&root, "a.b").unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut io = FileIo::create_new(&path).unwrap();
        format::create(
            &mut io,
            &[(60, 10)],
            0.5,
            AggregationMethod::Average,
            CreateMode::Sparse,
        )
        .unwrap();
        let answer = |req: Request<'_>| {
            let mut out = Vec::new();
            assert!(answer_metadata(&root, &req, &mut out));
            out
        };
        let get = Request::GetMetadata {
            metric: "a.b",
            key: "aggregationMethod",
        };
        let mut want = Vec::new();
        encode_metadata_value("average", &mut want);
        assert_eq!(answer(get.clone()), want);
        let set = Request::SetMetadata {
            metric: "a.b",
            key: "aggregationMethod",
            value: Some("max"),
        };
        want.clear();
        encode_set_metadata("average", "max", &mut want);
        assert_eq!(answer(set), want);
        want.clear();
        encode_metadata_value("max", &mut want);
        assert_eq!(answer(get), want);
        let errors = [
            (
                Request::GetMetadata {
                    metric: "a.b",
                    key: "xFilesFactor",
                },
                "Unsupported metadata key \"xFilesFactor\"",
            ),
            (
                Request::SetMetadata {
                    metric: "a.b",
                    key: "aggregationMethod",
                    value: Some("median"),
                },
                "Unrecognized aggregation method: median",
            ),
            (
                Request::SetMetadata {
                    metric: "a.b",
                    key: "aggregationMethod",
                    value: None,
                },
                "Unrecognized aggregation method: <not a str>",
            ),
            (
                Request::GetMetadata {
                    metric: "no.such",
                    key: "aggregationMethod",
                },
                "no.such: no whisper file",
            ),
            (
                Request::GetMetadata {
                    metric: "../x",
                    key: "aggregationMethod",
                },
                "invalid metric name \"../x\": slash",
            ),
        ];
        for (req, message) in errors {
            want.clear();
            encode_error(message, &mut want);
            assert_eq!(answer(req.clone()), want, "{req:?}");
        }
        assert_eq!(aggregation_method(&path).unwrap(), AggregationMethod::Max);
        assert!(!answer_metadata(
            &root,
            &Request::CacheQuery { metric: "a.b" },
            &mut Vec::new()
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
