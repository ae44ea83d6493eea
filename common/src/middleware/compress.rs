//! `compress`: the response body compressed with zstd, brotli or gzip as the client's
//! `Accept-Encoding` prefers (q-values honoured), unless the body is smaller than
//! `minResponseBodyBytes` (when its length is known), already encoded, of an excluded (or
//! not included) content type, a range, or a response that has no body. This module
//! decides; the gateway streams the encoding.

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

use super::options::Options;
use crate::tree::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Brotli,
    Gzip,
}

impl Encoding {
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }

    fn from_token(t: &str) -> Option<Encoding> {
        match t.trim().to_ascii_lowercase().as_str() {
            "zstd" => Some(Encoding::Zstd),
            "br" => Some(Encoding::Brotli),
            "gzip" => Some(Encoding::Gzip),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Compress {
    encodings: Vec<Encoding>,
    default: Option<Encoding>,
    min_bytes: u64,
    excluded: Vec<String>,
    included: Vec<String>,
}

/// Content types never worth compressing again, and streams that must not be buffered.
const ALWAYS_EXCLUDED: &[&str] = &["text/event-stream", "application/grpc"];

impl Compress {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new(
            "compress",
            node,
            &[
                "excludedContentTypes",
                "includedContentTypes",
                "minResponseBodyBytes",
                "encodings",
                "defaultEncoding",
            ],
        )?;
        let encodings = match o.list("encodings")? {
            l if l.is_empty() => vec![Encoding::Zstd, Encoding::Brotli, Encoding::Gzip],
            l => l
                .iter()
                .map(|t| Encoding::from_token(t).ok_or_else(|| format!("compress.encodings: `{t}` (zstd, br, gzip)")))
                .collect::<Result<_, _>>()?,
        };
        let default = match o.string("defaultEncoding")?.filter(|d| !d.is_empty()) {
            Some(d) => Some(Encoding::from_token(&d).ok_or_else(|| format!("compress.defaultEncoding: `{d}`"))?),
            None => None,
        };
        let excluded = o.list("excludedContentTypes")?;
        let included = o.list("includedContentTypes")?;
        if !excluded.is_empty() && !included.is_empty() {
            return Err("compress: excludedContentTypes and includedContentTypes cannot both be set".into());
        }
        Ok(Compress {
            encodings,
            default,
            min_bytes: o.number("minResponseBodyBytes")?.unwrap_or(1024),
            excluded: excluded.iter().map(|t| t.to_ascii_lowercase()).collect(),
            included: included.iter().map(|t| t.to_ascii_lowercase()).collect(),
        })
    }

    /// The client's preferred encoding among ours (`q=0` refuses one; `*` takes our first).
    fn negotiate(&self, accept: Option<&str>) -> Option<Encoding> {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return self.default;
        };
        let mut best: Option<(f32, usize, Encoding)> = None;
        for part in accept.split(',') {
            let mut it = part.split(';');
            let token = it.next().unwrap_or_default().trim();
            let q = it
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if q <= 0.0 {
                continue;
            }
            let candidates: Vec<Encoding> = if token == "*" {
                self.encodings.clone()
            } else {
                Encoding::from_token(token)
                    .into_iter()
                    .filter(|e| self.encodings.contains(e))
                    .collect()
            };
            for e in candidates {
                let rank = self.encodings.iter().position(|x| *x == e).unwrap_or(usize::MAX);
                if best.is_none_or(|(bq, br, _)| q > bq || (q == bq && rank < br)) {
                    best = Some((q, rank, e));
                }
            }
        }
        best.map(|(_, _, e)| e)
    }

    /// Whether and how to compress this response.
    pub fn choose(
        &self,
        method: &Method,
        accept: Option<&str>,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<Encoding> {
        if *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status == StatusCode::PARTIAL_CONTENT
            || headers.contains_key(header::CONTENT_ENCODING)
            || headers.contains_key(header::CONTENT_RANGE)
        {
            return None;
        }
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|l| l < self.min_bytes) {
            return None;
        }
        let ctype = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
            .unwrap_or_default();
        if ALWAYS_EXCLUDED.iter().any(|t| ctype.starts_with(t)) || self.excluded.contains(&ctype) {
            return None;
        }
        if !self.included.is_empty() && !self.included.contains(&ctype) {
            return None;
        }
        self.negotiate(accept)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::middleware::testing::node;
    use crate::middleware::{Spec, parse};

    fn compress(pairs: &[(&str, &str)]) -> Compress {
        match parse("compress", &node(pairs)).unwrap() {
            Spec::Compress(c) => c,
            _ => unreachable!(),
        }
    }

    fn headers(len: Option<u64>, ctype: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(l) = len {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(l));
        }
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ctype).unwrap());
        h
    }

    #[test]
    fn negotiation_sizes_and_types() {
        let c = compress(&[]);
        let big = headers(Some(5000), "text/html; charset=utf-8");
        let ok = StatusCode::OK;
        assert_eq!(
            c.choose(&Method::GET, Some("gzip, br"), ok, &big),
            Some(Encoding::Brotli)
        );
        assert_eq!(
            c.choose(&Method::GET, Some("gzip;q=1, br;q=0.5"), ok, &big),
            Some(Encoding::Gzip)
        );
        assert_eq!(
            c.choose(&Method::GET, Some("br;q=0, gzip"), ok, &big),
            Some(Encoding::Gzip)
        );
        assert_eq!(c.choose(&Method::GET, Some("*"), ok, &big), Some(Encoding::Zstd));
        assert_eq!(c.choose(&Method::GET, Some("identity"), ok, &big), None);
        assert_eq!(c.choose(&Method::GET, None, ok, &big), None);
        assert_eq!(
            c.choose(&Method::GET, Some("gzip"), ok, &headers(Some(100), "text/html")),
            None,
            "small"
        );
        assert_eq!(c.choose(&Method::HEAD, Some("gzip"), ok, &big), None);
        assert_eq!(c.choose(&Method::GET, Some("gzip"), StatusCode::NO_CONTENT, &big), None);
        assert_eq!(
            c.choose(&Method::GET, Some("gzip"), ok, &headers(None, "text/event-stream")),
            None
        );
        let mut encoded = big.clone();
        encoded.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(c.choose(&Method::GET, Some("gzip"), ok, &encoded), None);
        let only_json = compress(&[("includedContentTypes", "application/json"), ("encodings", "gzip")]);
        assert_eq!(only_json.choose(&Method::GET, Some("br, gzip"), ok, &big), None);
        assert_eq!(
            only_json.choose(
                &Method::GET,
                Some("br, gzip"),
                ok,
                &headers(Some(5000), "application/json")
            ),
            Some(Encoding::Gzip)
        );
        assert!(parse("compress", &node(&[("encodings", "lzma")])).is_err());
        assert!(
            parse(
                "compress",
                &node(&[("excludedContentTypes", "a/b"), ("includedContentTypes", "c/d")])
            )
            .is_err()
        );
    }
}
