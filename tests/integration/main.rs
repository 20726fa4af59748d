//! One integration-test binary for the whole project. The tests drive the
//! built `kubectl-apitrace` and `apitrace-probe` as a user would.
//!
//! Tests that need root and Envoy run them for real. Where they cannot run
//! (not root, no Envoy), they say so and skip, except under `CI=true`, where
//! they fail: CI must never pass without having run them.

mod bad_inputs;
mod cli;
mod cluster;
mod demo;
mod dissector;
mod fake_api;
mod fake_cluster;
mod fake_rbac;
mod filter;
mod heap;
mod identity;
mod image;
mod layering;
mod platforms;
mod probe;
mod replay;
mod sidecar;
mod support;

/// The system's allocator, counted where a memory test asks (`heap`).
#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;
