//! The join engine of `kubectl apitrace`.
//!
//! Three layers observe an API call: the sidecar's access log (ALS), the WASM
//! filter in the sidecar, and the TC program on the pod's interfaces. They
//! arrive from several probes, late and in any order. The [`Joiner`] keeps what
//! it has been given, matches it, and emits one [`CallRecord`] per call:
//!
//! - ALS and WASM share the `x-request-id` Envoy assigned, and so does the TC
//!   event of the hop from the sidecar to the app over `lo`, where the request is
//!   plaintext and carries the header.
//! - The TC event of the request's first packet on the wire (`eth0`) has no
//!   header Envoy added; it is matched through the ALS entry's downstream tuple
//!   (the connection the sidecar accepted) and time: the last request start on
//!   that connection at or before the sidecar started the stream.
//!
//! The engine does no I/O and reads no clock: its inputs carry the time, so the
//! same inputs always give the same records.

// The join's public API is what the CLI, the benchmark and the fuzz targets
// are written against: each item says what it is for.
#![warn(missing_docs)]

mod directory;
mod engine;
#[cfg(any(test, feature = "fixtures"))]
#[doc(hidden)]
pub mod fixtures;
pub mod predicate;
mod record;
mod saved;

pub use directory::{Directory, UnnamedCause, UnnamedPeers, Workload, WorkloadKind};
pub use engine::{Input, JoinConfig, JoinStats, Joiner, MissingParts, Part};
pub use record::{
    AuthRecord, CallRecord, Endpoint, GrpcRecord, Hop, Latency, Layer, Peer, WireRecord, WireScope,
    grpc_status_name,
};
pub use saved::{InvalidSavedInput, SavedEntry, call_to_saved, calls_seen_to_saved, to_saved};
