//! What the join keeps of the WASM filter's events: each reduced as it
//! arrives, and its token's JSON decoded once per token.

use std::sync::Arc;

use apitrace_proto::{Endpoint as ProtoEndpoint, GrpcCall, TrafficDirection, WasmEvent};
use rustc_hash::FxHashMap;
use serde_json::Value;

use super::texts::Texts;
use crate::record::AuthRecord;

/// Decoded JSON documents by their text. A client sends the same token with
/// each of its calls, so its claims are decoded once, not once per call.
#[derive(Debug, Default)]
pub(crate) struct JsonMemo {
    decoded: FxHashMap<String, Arc<Value>>,
}

impl JsonMemo {
    /// Tokens remembered at most: beyond it, the memo starts over.
    const CAPACITY: usize = 1024;

    /// `text` decoded; `null` when it is not JSON.
    fn decode(&mut self, text: String) -> Arc<Value> {
        if let Some(value) = self.decoded.get(&text) {
            return Arc::clone(value);
        }
        let value = Arc::new(serde_json::from_str(&text).unwrap_or(Value::Null));
        if self.decoded.len() >= Self::CAPACITY {
            self.decoded.clear();
        }
        self.decoded.insert(text, Arc::clone(&value));
        value
    }
}

/// A text field of a [`WasmPart`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum WasmText {
    Method,
    Path,
    Authority,
    Scheme,
    Fingerprint,
    SourceIp,
    DestinationIp,
}

const WASM_TEXTS: usize = WasmText::DestinationIp as usize + 1;

/// What the join keeps of a WASM event, reduced as it arrives: its strings
/// in one allocation and its token's JSON decoded. The event's own strings,
/// its request id (the call's own) among them, are freed then, while still in
/// the cache; a second later the call reads back this, a few cache lines, not
/// a 400-byte event and a string for each field.
#[derive(Debug)]
pub(crate) struct WasmPart {
    /// When the filter saw the request.
    pub time_ns: i64,
    pub duration_ns: i64,
    pub status: u32,
    source_port: Option<u32>,
    destination_port: Option<u32>,
    pub direction: TrafficDirection,
    /// Each [`WasmText`].
    texts: Texts<WASM_TEXTS>,
    auth: Option<WasmAuth>,
    pub grpc: Option<GrpcCall>,
}

/// The caller's credentials as a [`WasmPart`] keeps them; the scheme and the
/// fingerprint are in its text.
#[derive(Debug)]
struct WasmAuth {
    claims: Arc<Value>,
    jwt_header: Arc<Value>,
    token: Option<String>,
    error: Option<String>,
}

impl WasmPart {
    /// `event` reduced. The filter sends the raw token only when the session
    /// opted in to secrets; a saved session replayed without `--show-secrets`
    /// still leaves it out.
    pub fn new(event: WasmEvent, show_secrets: bool, json: &mut JsonMemo) -> Self {
        let direction = event.listener_direction();
        let (source_ip, source_port) = split_endpoint(event.source);
        let (destination_ip, destination_port) = split_endpoint(event.destination);
        let (scheme, fingerprint, auth) = match event.auth {
            Some(auth) => (
                auth.scheme,
                auth.fingerprint,
                Some(WasmAuth {
                    claims: if auth.jwt_claims_json.is_empty() {
                        Arc::new(Value::Object(serde_json::Map::new()))
                    } else {
                        json.decode(auth.jwt_claims_json)
                    },
                    jwt_header: json.decode(auth.jwt_header_json),
                    token: (show_secrets && !auth.token.is_empty()).then_some(auth.token),
                    error: (!auth.decode_error.is_empty()).then_some(auth.decode_error),
                }),
            ),
            None => (String::new(), String::new(), None),
        };
        // In `WasmText`'s order.
        let texts = Texts::new([
            &event.method,
            &event.path,
            &event.authority,
            &scheme,
            &fingerprint,
            &source_ip,
            &destination_ip,
        ]);
        Self {
            time_ns: event.time_unix_nano,
            duration_ns: event.duration_ns,
            status: event.status,
            source_port,
            destination_port,
            direction,
            texts,
            auth,
            grpc: event.grpc,
        }
    }

    pub fn prefetch_texts(&self) {
        self.texts.prefetch();
    }

    pub fn text(&self, field: WasmText) -> &str {
        self.texts.get(field as usize)
    }

    pub fn is_inbound(&self) -> bool {
        self.direction == TrafficDirection::Inbound
    }

    pub fn source(&self) -> Option<ProtoEndpoint> {
        self.source_port
            .map(|port| ProtoEndpoint::new(self.text(WasmText::SourceIp), port))
    }

    pub fn destination(&self) -> Option<ProtoEndpoint> {
        self.destination_port
            .map(|port| ProtoEndpoint::new(self.text(WasmText::DestinationIp), port))
    }

    pub fn auth_record(&mut self) -> Option<AuthRecord> {
        let auth = self.auth.take()?;
        Some(AuthRecord {
            scheme: self.text(WasmText::Scheme).to_owned(),
            claims: auth.claims,
            jwt_header: auth.jwt_header,
            fingerprint: self.text(WasmText::Fingerprint).to_owned(),
            token: auth.token,
            error: auth.error,
        })
    }
}

/// An endpoint's address and port, the address empty and the port `None`
/// without one.
fn split_endpoint(endpoint: Option<ProtoEndpoint>) -> (String, Option<u32>) {
    endpoint.map_or((String::new(), None), |e| (e.ip, Some(e.port)))
}

#[cfg(test)]
mod tests {
    use apitrace_proto::AuthInfo;

    use super::*;

    fn event() -> WasmEvent {
        WasmEvent {
            time_unix_nano: 7,
            request_id: "req-1".into(),
            method: "GET".into(),
            path: "/caf\u{e9}/\u{1f600}".into(),
            authority: String::new(),
            status: 503,
            source: Some(ProtoEndpoint::new("10.0.0.1", 41_000)),
            destination: None,
            listener_direction: TrafficDirection::Inbound.into(),
            auth: Some(AuthInfo {
                scheme: "Bearer".into(),
                jwt_header_json: r#"{"alg":"none"}"#.into(),
                jwt_claims_json: r#"{"sub":"alice"}"#.into(),
                fingerprint: "sha256:ab".into(),
                token: "secret".into(),
                ..AuthInfo::default()
            }),
            duration_ns: 9_000,
            ..WasmEvent::default()
        }
    }

    #[test]
    fn a_reduced_wasm_event_gives_back_each_field() {
        let mut part = WasmPart::new(event(), false, &mut JsonMemo::default());
        let texts = [
            (WasmText::Method, "GET"),
            (WasmText::Path, "/caf\u{e9}/\u{1f600}"),
            (WasmText::Authority, ""),
            (WasmText::Scheme, "Bearer"),
            (WasmText::Fingerprint, "sha256:ab"),
            (WasmText::SourceIp, "10.0.0.1"),
            (WasmText::DestinationIp, ""),
        ];
        for (field, expected) in texts {
            assert_eq!(part.text(field), expected, "{field:?}");
        }
        assert!(part.is_inbound());
        assert_eq!(part.direction.as_str(), "inbound");
        assert_eq!(part.source(), Some(ProtoEndpoint::new("10.0.0.1", 41_000)));
        assert_eq!(part.destination(), None);
        let auth = part.auth_record().unwrap();
        assert_eq!(auth.scheme, "Bearer");
        assert_eq!(auth.fingerprint, "sha256:ab");
        assert_eq!(auth.claims["sub"], "alice");
        assert_eq!(auth.jwt_header["alg"], "none");
        assert_eq!(auth.token, None, "no token without --show-secrets");
    }

    #[test]
    fn the_token_is_kept_only_when_secrets_are_shown() {
        let mut part = WasmPart::new(event(), true, &mut JsonMemo::default());
        assert_eq!(part.auth_record().unwrap().token.as_deref(), Some("secret"));
    }
}
