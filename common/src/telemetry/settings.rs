//! Tracing configuration from the standard OpenTelemetry environment variables, read
//! once at start. Anything set but not understood is an error naming the variable,
//! so a typo never silently turns tracing off.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use super::propagation::{Propagators, SpanContext};

#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct SettingsError {
    pub var: &'static str,
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError {
        var,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// The root decision of a sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    On,
    Off,
    /// Keep this fraction of new traces, decided by the trace id.
    Ratio(f64),
}

/// `OTEL_TRACES_SAMPLER`: a root decision, optionally deferring to the parent's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    pub parent_based: bool,
    pub root: Root,
}

impl Default for Sampler {
    /// `parentbased_always_on`, the specification's default.
    fn default() -> Self {
        Sampler {
            parent_based: true,
            root: Root::On,
        }
    }
}

impl Sampler {
    pub fn should_sample(&self, parent: Option<&SpanContext>) -> bool {
        if self.parent_based
            && let Some(p) = parent
        {
            return p.sampled;
        }
        match self.root {
            Root::On => true,
            Root::Off => false,
            Root::Ratio(r) => {
                // The trace id's low 56 bits, as the W3C random flag makes them random.
                let id = parent.map(|p| p.trace_id);
                let bits = match id {
                    Some(t) => u64::from_be_bytes([0, t.0[9], t.0[10], t.0[11], t.0[12], t.0[13], t.0[14], t.0[15]]),
                    None => fastrand::u64(..) >> 8,
                };
                (bits as f64) < r * (1u64 << 56) as f64
            }
        }
    }
}

/// Everything the tracer and its exporter need.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    pub protocol: Protocol,
    /// The URL spans are posted to (gRPC: scheme and authority only).
    pub endpoint: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub sampler: Sampler,
    pub propagators: Propagators,
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, decoded.
    pub resource_attributes: Vec<(String, String)>,
    pub max_queue: usize,
    pub max_batch: usize,
    pub schedule_delay: Duration,
}

impl TraceSettings {
    /// Read the process environment.
    pub fn from_env() -> Result<Option<TraceSettings>, SettingsError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// `None` when tracing is off: `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`,
    /// or no OTLP endpoint and no `OTEL_TRACES_EXPORTER=otlp`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<TraceSettings>, SettingsError> {
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let traces_endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        match get("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            Some("none") => return Ok(None),
            Some("otlp") => {}
            Some(other) => {
                return Err(err(
                    "OTEL_TRACES_EXPORTER",
                    format!("`{other}` is not supported (otlp or none)"),
                ));
            }
            None if traces_endpoint.is_none() && endpoint.is_none() => return Ok(None),
            None => {}
        }
        let (pvar, protocol) = match get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(p) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(p)),
            None => ("OTEL_EXPORTER_OTLP_PROTOCOL", get("OTEL_EXPORTER_OTLP_PROTOCOL")),
        };
        let protocol = match protocol.as_deref().map(str::trim) {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(err(pvar, format!("`{other}` is not supported (grpc or http/protobuf)")));
            }
        };
        let (evar, url) = match (traces_endpoint, endpoint, protocol) {
            (Some(t), _, _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", t),
            (None, Some(e), Protocol::HttpProtobuf) => (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}/v1/traces", e.trim_end_matches('/')),
            ),
            (None, Some(e), Protocol::Grpc) => ("OTEL_EXPORTER_OTLP_ENDPOINT", e),
            (None, None, Protocol::HttpProtobuf) => {
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318/v1/traces".into())
            }
            (None, None, Protocol::Grpc) => ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317".into()),
        };
        let endpoint: Uri = url
            .trim()
            .parse()
            .map_err(|_| err(evar, format!("`{url}` is not a URL")))?;
        match endpoint.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(err(
                    evar,
                    "https endpoints are not supported yet: export over http to a collector in the \
                     task or on the host (the ADOT collector sidecar), which forwards over TLS",
                ));
            }
            _ => return Err(err(evar, format!("`{url}` must start with http://"))),
        }
        if endpoint.host().is_none() {
            return Err(err(evar, format!("`{url}` has no host")));
        }

        let mut headers = Vec::new();
        for var in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
            for (k, v) in get(var).map(|v| key_values(&v)).unwrap_or_default() {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| err(var, format!("`{k}` is not a header name")))?;
                let value =
                    HeaderValue::from_str(&v).map_err(|_| err(var, format!("the value of `{k}` is not valid")))?;
                headers.push((name, value));
            }
        }
        let timeout = match get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").or_else(|| get("OTEL_EXPORTER_OTLP_TIMEOUT")) {
            Some(ms) => Duration::from_millis(
                ms.trim()
                    .parse()
                    .map_err(|_| err("OTEL_EXPORTER_OTLP_TIMEOUT", "milliseconds expected"))?,
            ),
            None => Duration::from_secs(10),
        };
        let arg = get("OTEL_TRACES_SAMPLER_ARG");
        let ratio = || -> Result<f64, SettingsError> {
            match &arg {
                None => Ok(1.0),
                Some(a) => a
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| err("OTEL_TRACES_SAMPLER_ARG", format!("`{a}` is not a ratio in [0, 1]"))),
            }
        };
        let sampler = match get("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
            None | Some("parentbased_always_on") => Sampler::default(),
            Some("always_on") => Sampler {
                parent_based: false,
                root: Root::On,
            },
            Some("always_off") => Sampler {
                parent_based: false,
                root: Root::Off,
            },
            Some("parentbased_always_off") => Sampler {
                parent_based: true,
                root: Root::Off,
            },
            Some("traceidratio") => Sampler {
                parent_based: false,
                root: Root::Ratio(ratio()?),
            },
            Some("parentbased_traceidratio") => Sampler {
                parent_based: true,
                root: Root::Ratio(ratio()?),
            },
            Some(other) => {
                return Err(err(
                    "OTEL_TRACES_SAMPLER",
                    format!(
                        "`{other}` is not supported (always_on, always_off, traceidratio, \
                         parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
                    ),
                ));
            }
        };
        let propagators = match get("OTEL_PROPAGATORS") {
            Some(p) => Propagators::parse(&p).map_err(|m| err("OTEL_PROPAGATORS", m))?,
            None => Propagators::default(),
        };
        let number = |var: &'static str, default: u64| -> Result<u64, SettingsError> {
            match get(var) {
                Some(v) => v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| err(var, format!("`{v}` is not a positive number"))),
                None => Ok(default),
            }
        };
        let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)? as usize;
        let max_batch = (number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)? as usize).min(max_queue);
        let schedule_delay = Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)?);
        Ok(Some(TraceSettings {
            protocol,
            endpoint,
            headers,
            timeout,
            sampler,
            propagators,
            service_name: get("OTEL_SERVICE_NAME").map(|s| s.trim().to_string()),
            resource_attributes: get("OTEL_RESOURCE_ATTRIBUTES")
                .map(|v| key_values(&v))
                .unwrap_or_default(),
            max_queue,
            max_batch,
            schedule_delay,
        }))
    }
}

/// `k=v,k2=v2` with percent-encoded values (W3C Baggage syntax, as the spec says);
/// entries without `=` are skipped.
pub fn key_values(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), crate::percent::decode(v.trim()).into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<TraceSettings>, SettingsError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TraceSettings::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn off_unless_an_endpoint_or_exporter_is_set() {
        assert!(settings(&[]).expect("ok").is_none());
        assert!(
            settings(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])
            .expect("ok")
            .is_none()
        );
        assert!(
            settings(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "none")
            ])
            .expect("ok")
            .is_none()
        );
        let s = settings(&[("OTEL_TRACES_EXPORTER", "otlp")]).expect("ok").expect("on");
        assert_eq!(s.endpoint, "http://localhost:4318/v1/traces");
    }

    #[test]
    fn endpoints_follow_the_specification() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])
            .expect("ok")
            .expect("on");
        assert_eq!(
            (s.protocol, s.endpoint.to_string().as_str()),
            (Protocol::HttpProtobuf, "http://c:4318/v1/traces")
        );
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .expect("ok")
        .expect("on");
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.endpoint.authority().map(|a| a.as_str()), Some("c:4317"));
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom"),
        ])
        .expect("ok")
        .expect("on");
        assert_eq!(s.endpoint, "http://t:1/custom");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (vars, var) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                    ("OTEL_TRACES_SAMPLER", "sometimes"),
                ],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (vec![("OTEL_TRACES_EXPORTER", "zipkin")], "OTEL_TRACES_EXPORTER"),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
        ] {
            let e = settings(&vars).expect_err("refused");
            assert_eq!(e.var, var, "{e}");
        }
    }

    #[test]
    fn resource_attributes_and_headers_are_decoded() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=a%20b,bad"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret"),
        ])
        .expect("ok")
        .expect("on");
        assert_eq!(
            s.resource_attributes,
            vec![
                ("deployment.environment".into(), "prod".into()),
                ("team".into(), "a b".into())
            ]
        );
        assert_eq!(s.headers[0].0, "x-api-key");
    }

    #[test]
    fn ratio_sampling_keeps_about_the_ratio() {
        let s = Sampler {
            parent_based: false,
            root: Root::Ratio(0.25),
        };
        let kept = (0..4000).filter(|_| s.should_sample(None)).count();
        assert!((800..1200).contains(&kept), "{kept}");
    }
}
