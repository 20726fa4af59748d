//! `kubectl apitrace` as a library: the binary (`src/main.rs`) parses the
//! command line and runs it; the benchmarks (`bench/`) reuse the demo's
//! pieces (pods, the sidecar, the app) to measure the same data path.

pub mod args;
pub mod cluster;
pub mod demo;
pub mod live;
pub mod output;
pub mod pipeline;
pub mod probe_client;
pub mod replay;
pub mod saved;
