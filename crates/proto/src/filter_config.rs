//! The WASM filter's configuration: the contract between whoever puts the
//! filter into a sidecar (the cluster session's `WasmPlugin.spec.pluginConfig`,
//! the demo's sidecar config) and the filter, which Envoy hands it as a JSON
//! string.
//!
//! Both sides use [`Config`]: a starter builds one with [`Config::new`] and
//! serializes it, and the filter reads it with [`Config::parse`], so a field
//! renamed on one side is a compile error on the other, not a filter that
//! refuses its configuration inside a running sidecar.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Envoy cluster through which the probe's HTTP port is reached, e.g.
    /// `outbound|15902||apitrace-probe.apitrace-system.svc.cluster.local`.
    pub ingest_cluster: String,
    /// The `:authority` of the ingest requests.
    pub ingest_authority: String,
    /// The session token the probe requires on ingest.
    pub session_token: String,
    /// Include raw credentials in events (the session's `--show-secrets`).
    #[serde(default)]
    pub show_secrets: bool,
    #[serde(default = "defaults::flush_interval_ms")]
    pub flush_interval_ms: u64,
    #[serde(default = "defaults::batch_max_events")]
    pub batch_max_events: usize,
    #[serde(default = "defaults::queue_max_bytes")]
    pub queue_max_bytes: usize,
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
}

mod defaults {
    pub(super) fn flush_interval_ms() -> u64 {
        200
    }
    pub(super) fn batch_max_events() -> usize {
        256
    }
    pub(super) fn queue_max_bytes() -> usize {
        1 << 20
    }
    pub(super) fn max_in_flight() -> usize {
        4
    }
    pub(super) fn timeout_ms() -> u64 {
        2000
    }
}

impl Config {
    /// A configuration that posts to `ingest_cluster` with the session's
    /// token, with the same batching and budget as a configuration that
    /// names only these fields.
    pub fn new(
        ingest_cluster: impl Into<String>,
        ingest_authority: impl Into<String>,
        session_token: impl Into<String>,
        show_secrets: bool,
    ) -> Self {
        Self {
            ingest_cluster: ingest_cluster.into(),
            ingest_authority: ingest_authority.into(),
            session_token: session_token.into(),
            show_secrets,
            flush_interval_ms: defaults::flush_interval_ms(),
            batch_max_events: defaults::batch_max_events(),
            queue_max_bytes: defaults::queue_max_bytes(),
            max_in_flight: defaults::max_in_flight(),
            timeout_ms: defaults::timeout_ms(),
        }
    }

    /// Reads the configuration Envoy hands the filter. The message says what
    /// is wrong; the filter logs it, since a sidecar has nobody else to tell.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let config: Self = serde_json::from_slice(json)
            .map_err(|e| format!("apitrace: invalid plugin configuration: {e}"))?;
        if config.ingest_cluster.is_empty() || config.session_token.is_empty() {
            return Err(
                "apitrace: plugin configuration needs ingest_cluster and session_token".into(),
            );
        }
        if config.batch_max_events == 0
            || config.flush_interval_ms == 0
            || config.max_in_flight == 0
        {
            return Err(
                "apitrace: batch_max_events, flush_interval_ms and max_in_flight must be positive"
                    .into(),
            );
        }
        Ok(config)
    }

    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::parse(
            br#"{"ingest_cluster":"c","ingest_authority":"probe","session_token":"t"}"#,
        )
        .unwrap();
        assert_eq!(config.flush_interval(), Duration::from_millis(200));
        assert!(!config.show_secrets);
        assert_eq!(config, Config::new("c", "probe", "t", false));
    }

    #[test]
    fn a_built_config_parses_back() {
        for config in [
            Config::new("outbound|15902||probe", "probe:15902", "s3cret", false),
            Config {
                queue_max_bytes: 8192,
                flush_interval_ms: 100,
                timeout_ms: 500,
                ..Config::new("ingest", "probe", "t", true)
            },
        ] {
            let json = serde_json::to_vec(&config).unwrap();
            assert_eq!(Config::parse(&json), Ok(config));
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(
            Config::parse(b"{")
                .unwrap_err()
                .contains("invalid plugin configuration")
        );
        assert!(
            Config::parse(br#"{"ingest_cluster":"","ingest_authority":"a","session_token":"t"}"#)
                .unwrap_err()
                .contains("needs ingest_cluster")
        );
        assert!(
            Config::parse(
                br#"{"ingest_cluster":"c","ingest_authority":"a","session_token":"t","typo":1}"#
            )
            .unwrap_err()
            .contains("unknown field")
        );
    }
}
