//! Reads the start of a plaintext HTTP/1.x message from the bytes the TC
//! program captured at a message boundary.
//!
//! The input is untrusted and truncated (at most [`HEAD_CAPACITY`] bytes of
//! whatever the pod sent), so the parser never assumes the head is complete:
//! it takes the start line and, from the header lines that fit, `x-request-id`
//! and `host`. Anything that is not HTTP/1.x yields `None`.
//!
//! [`HEAD_CAPACITY`]: apitrace_tc_event::HEAD_CAPACITY

use apitrace_proto::{HttpHead, PayloadKind, RequestLine, StatusLine, http_head::StartLine};

/// Methods of RFC 9110 and the WebDAV/PATCH ones seen in APIs. A start line
/// with another token is treated as not HTTP, which keeps binary protocols out.
const METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
];

pub fn parse(bytes: &[u8]) -> Option<HttpHead> {
    let (start, rest) = split_line(bytes)?;
    let start = std::str::from_utf8(start).ok()?;
    let start_line = parse_start_line(start)?;
    let mut head = HttpHead {
        start_line: Some(start_line),
        ..HttpHead::default()
    };
    // Header lines up to the blank line or the end of what was captured; a line
    // cut by the capture has no CRLF and is ignored.
    let mut rest = rest;
    while let Some((line, tail)) = split_line(rest) {
        if line.is_empty() {
            break;
        }
        rest = tail;
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        if name.eq_ignore_ascii_case(b"x-request-id") {
            head.request_id = value.to_owned();
        } else if name.eq_ignore_ascii_case(b"host") {
            head.authority = value.to_owned();
        }
    }
    Some(head)
}

/// What a message's first `bytes` are, given whether they parsed as an
/// HTTP/1.x head.
pub fn classify(bytes: &[u8], is_http1: bool) -> PayloadKind {
    /// What a client sends first on an HTTP/2 connection (RFC 9113 section 3.4).
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if is_http1 {
        return PayloadKind::Http1;
    }
    // Whole, or cut by the capture.
    if bytes.starts_with(PREFACE) || (bytes.len() >= 4 && PREFACE.starts_with(bytes)) {
        return PayloadKind::Http2;
    }
    match bytes {
        // A TLS record: content type (change_cipher_spec, alert, handshake,
        // application_data), legacy version 3.x, length up to 2^14 + 2048
        // (RFC 8446 section 5).
        [20..=23, 3, minor, high, low, ..]
            if *minor <= 4 && u16::from_be_bytes([*high, *low]) <= (1 << 14) + 2048 =>
        {
            PayloadKind::Tls
        }
        // An HTTP/2 frame header: a 24-bit length up to the largest frame size,
        // a defined type, and the reserved bit of the stream id clear
        // (RFC 9113 section 4.1).
        [_, _, _, frame_type, _, stream_high, ..]
            if *frame_type <= 9 && stream_high & 0x80 == 0 =>
        {
            PayloadKind::Http2
        }
        [] => PayloadKind::Unspecified,
        _ => PayloadKind::Other,
    }
}

fn parse_start_line(line: &str) -> Option<StartLine> {
    let mut parts = line.splitn(3, ' ');
    let first = parts.next()?;
    let second = parts.next()?;
    let third = parts.next().unwrap_or("");
    if let Some(version) = http_version(first) {
        let status: u32 = second.parse().ok()?;
        if !(100..=999).contains(&status) || second.len() != 3 {
            return None;
        }
        return Some(StartLine::Response(StatusLine {
            version: version.to_owned(),
            status,
        }));
    }
    let version = http_version(third)?;
    if !METHODS.contains(&first) || second.is_empty() || !second.bytes().all(is_target_byte) {
        return None;
    }
    Some(StartLine::Request(RequestLine {
        method: first.to_owned(),
        path: second.to_owned(),
        version: version.to_owned(),
    }))
}

fn http_version(token: &str) -> Option<&str> {
    matches!(token, "HTTP/1.0" | "HTTP/1.1").then_some(token)
}

/// Visible ASCII: what a request target may contain (RFC 9112 section 3.2).
fn is_target_byte(byte: u8) -> bool {
    (0x21..=0x7e).contains(&byte)
}

/// The bytes before the next CRLF (or bare LF), and the bytes after it.
fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|&b| b == b'\n')?;
    let line = &bytes[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, &bytes[end + 1..]))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &HttpHead) -> &RequestLine {
        match head.start_line.as_ref() {
            Some(StartLine::Request(line)) => line,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn request_with_request_id() {
        let head = parse(
            b"GET /api/orders?id=1 HTTP/1.1\r\nHost: server:8080\r\n\
              X-Request-Id: 4b1e-aa\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!(request(&head).method, "GET");
        assert_eq!(request(&head).path, "/api/orders?id=1");
        assert_eq!(head.request_id, "4b1e-aa");
        assert_eq!(head.authority, "server:8080");
    }

    #[test]
    fn response_status() {
        let head = parse(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").unwrap();
        match head.start_line {
            Some(StartLine::Response(status)) => assert_eq!(status.status, 404),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_header_line_is_ignored() {
        let head = parse(b"POST /x HTTP/1.1\r\nx-request-id: cut-her").unwrap();
        assert_eq!(request(&head).method, "POST");
        assert_eq!(head.request_id, "");
    }

    #[test]
    fn not_http() {
        for bytes in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"get / HTTP/1.1\r\n",
            b"GET / HTTP/1.1",
            b"GET  HTTP/1.1\r\n",
            b"HTTP/1.1 2000 OK\r\n",
            b"HTTP/1.1 abc OK\r\n",
            b"",
            b"\r\n",
            b"GET /\xff HTTP/1.1\r\n",
        ] {
            assert!(parse(bytes).is_none(), "{bytes:?}");
        }
    }

    #[test]
    fn message_starts_are_classified_by_their_first_bytes() {
        let cases: [(&[u8], PayloadKind); 8] = [
            (b"GET / HTTP/1.1\r\n\r\n", PayloadKind::Http1),
            // A ClientHello and application data, as curl and Envoy send them.
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                PayloadKind::Tls,
            ),
            (b"\x17\x03\x03\x00\x45\x8a", PayloadKind::Tls),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
                PayloadKind::Http2,
            ),
            // A server's SETTINGS frame, then a HEADERS frame of stream 1.
            (b"\x00\x00\x06\x04\x00\x00\x00\x00\x00", PayloadKind::Http2),
            (b"\x00\x00\x1d\x01\x04\x00\x00\x00\x01", PayloadKind::Http2),
            (b"{\"order\": 42}", PayloadKind::Other),
            (b"", PayloadKind::Unspecified),
        ];
        for (bytes, expected) in cases {
            let is_http1 = parse(bytes).is_some();
            assert_eq!(classify(bytes, is_http1), expected, "{bytes:?}");
        }
    }

    #[test]
    fn header_values_with_invalid_utf8_are_skipped() {
        let head = parse(b"GET / HTTP/1.1\r\nhost: \xff\xfe\r\nx-request-id: ok\r\n\r\n").unwrap();
        assert_eq!(head.authority, "");
        assert_eq!(head.request_id, "ok");
    }

    #[test]
    fn headers_after_the_blank_line_are_body() {
        let head = parse(b"GET / HTTP/1.1\r\n\r\nx-request-id: body\r\n").unwrap();
        assert_eq!(head.request_id, "");
    }
}
