//! What a probe does for its session while it runs: watch the anchor Lease the
//! CLI renews, and once nobody renews it (the CLI was killed, or its machine
//! lost the network) undo the session itself. Without this, a `kill -9` of the
//! CLI would leave the mesh patched until someone ran `cleanup`.

use std::time::Duration;

use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::{Api, Client};
use tokio::time::Instant;

use crate::{
    cleanup::{self, CleanupError, Reach, Report, Which},
    objects::LEASE_DURATION,
};

/// How the anchor ended.
#[derive(Debug)]
pub enum Anchor {
    /// Not renewed for its whole duration: the CLI is gone, the session is ours to undo.
    Lapsed(Box<Lease>),
    /// Deleted: the CLI tore the session down (or `cleanup` did).
    Gone,
}

/// Returns when the Lease `namespace/name` lapses or disappears, calling
/// `on_error` for each failed read (and reading again: an API server that
/// cannot be reached says nothing about the CLI).
///
/// A lapse is judged by this process's own clock, from the moment the Lease
/// was last seen to change, as client-go's leader election does: the CLI's
/// `renewTime` comes from another machine's clock, and comparing it with ours
/// would end sessions early (or never) whenever the two disagree.
pub async fn watch_anchor(
    client: &Client,
    namespace: &str,
    name: &str,
    mut on_error: impl FnMut(&kube::Error),
) -> Anchor {
    let api = Api::<Lease>::namespaced(client.clone(), namespace);
    let mut last_seen: Option<(Lease, Instant)> = None;
    loop {
        let duration = last_seen
            .as_ref()
            .map_or(LEASE_DURATION, |(lease, _)| lease_duration(lease));
        match api.get_opt(name).await {
            Ok(None) => return Anchor::Gone,
            Ok(Some(lease)) => {
                let changed = last_seen
                    .as_ref()
                    .is_none_or(|(seen, _)| renewal(seen) != renewal(&lease));
                if changed {
                    last_seen = Some((lease, Instant::now()));
                } else if let Some((_, since)) = &last_seen
                    && since.elapsed() > lease_duration(&lease)
                {
                    return Anchor::Lapsed(Box::new(lease));
                }
            }
            Err(error) => on_error(&error),
        }
        tokio::time::sleep(poll_interval(duration)).await;
    }
}

/// Undoes the session `lease` anchors, within the namespaces it names: the
/// mesh config entry, Telemetry and WasmPlugin, the traced pods' label, then
/// the Lease (which owns the probes, their Service and Secret).
pub async fn undo_lapsed(client: &Client, lease: &Lease) -> Result<Report, UndoError> {
    let session = cleanup::session_of(&lease.metadata)
        .ok_or_else(|| UndoError::NotAnAnchor(lease.metadata.name.clone().unwrap_or_default()))?;
    Ok(cleanup::cleanup(
        client,
        &Which::Session(session),
        &Reach::of_anchor(lease),
        &[],
        Timestamp::now(),
    )
    .await?)
}

#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error("Lease {0} carries no session label: it is not a session's anchor")]
    NotAnAnchor(String),
    #[error(transparent)]
    Cleanup(#[from] CleanupError),
}

/// What changes when the CLI renews: `renewTime`, and with it the resource version.
fn renewal(lease: &Lease) -> (Option<&str>, Option<Timestamp>) {
    (
        lease.metadata.resource_version.as_deref(),
        lease
            .spec
            .as_ref()
            .and_then(|spec| spec.renew_time.as_ref())
            .map(|time| time.0),
    )
}

fn lease_duration(lease: &Lease) -> Duration {
    lease
        .spec
        .as_ref()
        .and_then(|spec| spec.lease_duration_seconds)
        .and_then(|seconds| u64::try_from(seconds).ok())
        .map_or(LEASE_DURATION, Duration::from_secs)
}

/// Several reads per lease duration, so that a lapse is acted on soon after it
/// happens, but no more than one read a second per probe.
fn poll_interval(duration: Duration) -> Duration {
    (duration / 6).clamp(Duration::from_secs(1), Duration::from_secs(5))
}
