//! `contentType`: a response the backend sent without `Content-Type` gets one, detected
//! from its first bytes as Go's `http.DetectContentType` does (the WHATWG MIME sniffing
//! subset Traefik relies on). Without the middleware Berth never guesses, as Traefik's
//! entrypoints do not. `autoDetect: false` (deprecated in Traefik) turns it off.
//!
//! This module is the detection; the gateway reads the first body chunk for it in the
//! response phase ([`super::Spec::sniffs_content_type`]).

use super::options::Options;
use crate::tree::Node;

/// How many leading bytes are looked at (Go's `sniffLen`).
pub const SNIFF_LEN: usize = 512;

#[derive(Debug)]
pub struct ContentType {
    pub enabled: bool,
}

impl ContentType {
    pub fn parse(node: &Node) -> Result<ContentType, String> {
        let o = Options::new("contentType", node, &["autoDetect"])?;
        let enabled = match o.string("autoDetect")?.as_deref() {
            None | Some("") => true,
            Some(_) => o.bool("autoDetect")?,
        };
        Ok(ContentType { enabled })
    }
}

const HTML_TAGS: [&[u8]; 17] = [
    b"<!DOCTYPE HTML",
    b"<HTML",
    b"<HEAD",
    b"<SCRIPT",
    b"<IFRAME",
    b"<H1",
    b"<DIV",
    b"<FONT",
    b"<TABLE",
    b"<A",
    b"<STYLE",
    b"<TITLE",
    b"<B",
    b"<BODY",
    b"<BR",
    b"<P",
    b"<!--",
];

/// Exact prefixes, in Go's order after the HTML and XML checks.
const EXACT: [(&[u8], &str); 24] = [
    (b"%PDF-", "application/pdf"),
    (b"%!PS-Adobe-", "application/postscript"),
    (b"\xFE\xFF", "text/plain; charset=utf-16be"),
    (b"\xFF\xFE", "text/plain; charset=utf-16le"),
    (b"\xEF\xBB\xBF", "text/plain; charset=utf-8"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"\x00\x00\x02\x00", "image/x-icon"),
    (b"BM", "image/bmp"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\x89PNG\x0D\x0A\x1A\x0A", "image/png"),
    (b"\xFF\xD8\xFF", "image/jpeg"),
    (b"ID3", "audio/mpeg"),
    (b"OggS\x00", "application/ogg"),
    (b"MThd\x00\x00\x00\x06", "audio/midi"),
    (b"\x1A\x45\xDF\xA3", "video/webm"),
    (b"\x00\x01\x00\x00", "font/ttf"),
    (b"OTTO", "font/otf"),
    (b"ttcf", "font/collection"),
    (b"wOFF", "font/woff"),
    (b"wOF2", "font/woff2"),
    (b"\x1F\x8B\x08", "application/x-gzip"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x00\x61\x73\x6D", "application/wasm"),
];

/// `RIFF`/`FORM` containers: the first four bytes, then the type at 8..12.
const CONTAINERS: [(&[u8], &[u8], &str); 4] = [
    (b"RIFF", b"WEBP", "image/webp"),
    (b"FORM", b"AIFF", "audio/aiff"),
    (b"RIFF", b"AVI ", "video/avi"),
    (b"RIFF", b"WAVE", "audio/wave"),
];

/// Go's `http.DetectContentType` on the first [`SNIFF_LEN`] bytes of `data`.
pub fn detect(data: &[u8]) -> &'static str {
    let data = &data[..data.len().min(SNIFF_LEN)];
    let first = data
        .iter()
        .position(|b| !matches!(b, b'\t' | b'\n' | 0x0c | b'\r' | b' '))
        .unwrap_or(data.len());
    let trimmed = &data[first..];
    for tag in HTML_TAGS {
        if trimmed.len() > tag.len()
            && trimmed[..tag.len()].eq_ignore_ascii_case(tag)
            && matches!(trimmed[tag.len()], b' ' | b'>')
        {
            return "text/html; charset=utf-8";
        }
    }
    if trimmed.len() >= 5 && trimmed[..5].eq_ignore_ascii_case(b"<?xml") {
        return "text/xml; charset=utf-8";
    }
    // Go's order puts the text BOMs and images before the containers; none of these
    // prefixes overlap, so checking all exact ones first gives the same answers.
    for (prefix, mime) in EXACT {
        if data.starts_with(prefix) {
            return mime;
        }
    }
    if data.starts_with(b"Rar!\x1A\x07\x00") || data.starts_with(b"Rar!\x1A\x07\x01\x00") {
        return "application/x-rar-compressed";
    }
    for (head, kind, mime) in CONTAINERS {
        if data.len() >= 12 && data.starts_with(head) && &data[8..12] == kind {
            // WebP also needs `VP` after the type.
            if kind == b"WEBP" && !(data.len() >= 14 && &data[12..14] == b"VP") {
                continue;
            }
            return mime;
        }
    }
    if is_mp4(data) {
        return "video/mp4";
    }
    if !data
        .iter()
        .any(|&b| matches!(b, 0x00..=0x08 | 0x0B | 0x0E..=0x1A | 0x1C..=0x1F))
    {
        return "text/plain; charset=utf-8";
    }
    "application/octet-stream"
}

/// An ISO base media file with an `mp4` brand (Go's `mp4Sig`).
fn is_mp4(data: &[u8]) -> bool {
    if data.len() < 12 {
        return false;
    }
    let size = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    if data.len() < size || !size.is_multiple_of(4) || &data[4..8] != b"ftyp" {
        return false;
    }
    (8..size)
        .step_by(4)
        .filter(|&st| st != 12)
        .any(|st| data.get(st..st + 3) == Some(b"mp4"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::middleware::testing::node;

    /// Cases from Go's sniff_test.go.
    #[test]
    fn detects_as_go_does() {
        for (data, want) in [
            (&b""[..], "text/plain; charset=utf-8"),
            (b"\x01\x02\x03", "application/octet-stream"),
            (b"<HtMl><bOdY>blah blah blah</body></html>", "text/html; charset=utf-8"),
            (b"\n<html>blah</html>", "text/html; charset=utf-8"),
            (b"   <!DOCTYPE HTML>...", "text/html; charset=utf-8"),
            (b"<!-- comment -->", "text/html; charset=utf-8"),
            (b"<htmlx>", "text/plain; charset=utf-8"),
            (b"\n  <?xml!", "text/xml; charset=utf-8"),
            (b"%PDF-1.5", "application/pdf"),
            (b"GIF89a...", "image/gif"),
            (b"\x89PNG\x0D\x0A\x1A\x0A", "image/png"),
            (b"\xFF\xD8\xFF\xE0", "image/jpeg"),
            (b"RIFF\x00\x00\x00\x00WEBPVP", "image/webp"),
            (b"RIFF\x00\x00\x00\x00WAVE", "audio/wave"),
            (b"\x1F\x8B\x08\x00", "application/x-gzip"),
            (b"PK\x03\x04", "application/zip"),
            (
                b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom<\x06t\xbfmdat",
                "video/mp4",
            ),
            (b"{\"json\": true}", "text/plain; charset=utf-8"),
            (b"\xEF\xBB\xBFhi", "text/plain; charset=utf-8"),
            (b"\xFE\xFF\x00h", "text/plain; charset=utf-16be"),
            (b"\x00asm\x01", "application/wasm"),
            (b"wOF2", "font/woff2"),
        ] {
            assert_eq!(detect(data), want, "{:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn auto_detect_false_turns_it_off() {
        assert!(ContentType::parse(&node(&[])).unwrap().enabled);
        assert!(!ContentType::parse(&node(&[("autoDetect", "false")])).unwrap().enabled);
        assert!(ContentType::parse(&node(&[("autoDetect", "maybe")])).is_err());
    }
}
