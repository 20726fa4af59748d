//! What a live session needs, the demo's and a cluster's alike: the join's
//! clock, random identifiers and secrets, and the signals that end it.

use anyhow::anyhow;
use k8s_openapi::jiff::Timestamp;

/// Now, in Unix nanoseconds: the clock the join engine is fed.
pub fn now_ns() -> i64 {
    Timestamp::now().as_nanosecond() as i64
}

/// `bytes` random bytes from the kernel's source, as hex.
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|e| anyhow!("cannot read random bytes: {e}"))?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM, whichever comes first.
pub async fn interrupted() {
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
