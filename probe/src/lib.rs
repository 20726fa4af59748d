//! The node agent of `kubectl apitrace`.
//!
//! One probe runs on each node that hosts a traced pod. It attaches the TC
//! program to the pods' interfaces, receives the sidecars' access logs (ALS) and
//! the WASM filter's events, and streams all of them to the CLI. Every source
//! publishes into a [`hub::Hub`]; the CLI's subscription reads from it.

pub mod als;
pub mod counters;
pub mod grpc_status;
pub mod http2;
pub mod http_head;
pub mod hub;
pub mod ingest;
pub mod peers;
pub mod run;
pub mod session;
pub mod subscribe;
pub mod tc;
