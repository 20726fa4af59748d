//! The proxy-wasm filter of `kubectl apitrace`.
//!
//! Istio's `WasmPlugin` (phase AUTHN, so the credentials are still on the
//! request) puts it into the selected sidecars. For every HTTP request it records
//! the `x-request-id` Envoy assigned, the request line, the status, the addresses,
//! and what the `Authorization` header says about the caller: the scheme, the
//! decoded JOSE header and claims of a JWT, and a SHA-256 fingerprint. The raw
//! credentials, and with them the signature, leave Envoy only when the session
//! opted in.
//!
//! The filter never blocks, delays or changes traffic: it reads headers, queues
//! an event when the request is logged, and the root context posts batches to
//! the probe on a timer with `dispatch_http_call`. The queue is bounded in bytes;
//! what does not fit is counted and reported with the next batch.

pub mod auth;
pub mod grpc;
pub mod queue;

#[cfg(target_arch = "wasm32")]
mod filter;
