//! The cluster side of a `kubectl apitrace` session, shared by the CLI (which
//! sets a session up and tears it down) and the probe (which cleans up when the
//! CLI is gone): targets and their preflight, the objects a session creates,
//! applying them with rollback, and cleanup. Nothing here depends on aya.

mod api_status;
pub mod apply;
pub mod check;
pub mod cleanup;
pub mod dry_run;
pub mod error_text;
pub mod identity;
pub mod istio;
pub mod mesh;
pub mod names;
pub mod objects;
pub mod session;
pub mod target;
pub mod watchdog;

#[cfg(test)]
mod mock;
#[cfg(test)]
mod mock_tests;
#[cfg(test)]
mod rbac_tests;
#[cfg(test)]
mod schema_tests;
