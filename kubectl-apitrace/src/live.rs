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

/// Resolves on Ctrl-C or (on Unix) SIGTERM: on the next one that no earlier
/// call was given.
///
/// The signals are received by one listener for the whole process, started
/// by the first call, which counts them. A session creates a new
/// `interrupted()` at each turn of its loop (inside `select!`); a listener of
/// its own per call would lose a signal that came between two turns (tokio
/// drops a signal no listener waits for once its handler is installed), and
/// the session would run on as if Ctrl-C had not been pressed. Each signal
/// counted is given to exactly one call, so a second Ctrl-C is a second one.
pub async fn interrupted() {
    use std::sync::atomic::{AtomicU64, Ordering};
    /// Signals given to a call so far.
    static GIVEN: AtomicU64 = AtomicU64::new(0);
    let mut received = signals();
    loop {
        let count = *received.borrow_and_update();
        let given = GIVEN.load(Ordering::Acquire);
        if count > given {
            if GIVEN
                .compare_exchange(given, given + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
            continue;
        }
        if received.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// How many signals the process received, from its one listener.
///
/// The listener runs on a thread of its own with its own runtime, not as a
/// task of the runtime that first asked: that runtime may end while the
/// process goes on (a test's, or a command that builds one per phase), and
/// with it a task that was the only listener, so that later sessions would
/// never see Ctrl-C. Without the thread (it could not be started), nothing
/// installs a handler and Ctrl-C ends the process as it does by default.
fn signals() -> tokio::sync::watch::Receiver<u64> {
    static RECEIVED: std::sync::OnceLock<tokio::sync::watch::Receiver<u64>> =
        std::sync::OnceLock::new();
    RECEIVED
        .get_or_init(|| {
            let (count, received) = tokio::sync::watch::channel(0u64);
            let (installed, ready) = std::sync::mpsc::channel();
            let listener = std::thread::Builder::new()
                .name("apitrace-signals".into())
                .spawn(move || {
                    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    runtime.block_on(listen(count, installed));
                });
            // A signal sent right after the first call returns must be
            // counted: wait until the handlers are installed.
            if listener.is_ok() {
                let _ = ready.recv();
            }
            received
        })
        .clone()
}

/// Counts Ctrl-C and (on Unix) SIGTERM into `count`, for the process's life;
/// says on `installed` once its handlers are in place.
async fn listen(count: tokio::sync::watch::Sender<u64>, installed: std::sync::mpsc::Sender<()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        let _ = installed.send(());
        let (Ok(mut interrupt), Ok(mut terminate)) = handlers else {
            return;
        };
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            count.send_modify(|count| *count += 1);
        }
    }
    #[cfg(windows)]
    {
        let handler = tokio::signal::windows::ctrl_c();
        let _ = installed.send(());
        let Ok(mut ctrl_c) = handler else {
            return;
        };
        while ctrl_c.recv().await.is_some() {
            count.send_modify(|count| *count += 1);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::{Signal, raise};

    use super::*;

    /// A Ctrl-C that comes while nothing waits for it (between two turns of
    /// a session's loop) is given to the next call, and each signal to one
    /// call only; the listener outlives the runtime that started it.
    #[test]
    fn a_signal_between_two_waits_is_not_lost_and_is_given_once() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
        };
        let soon = || tokio::time::timeout(Duration::from_millis(500), interrupted());
        // The listener starts with the first call, in a runtime that then ends.
        runtime().block_on(async {
            assert!(soon().await.is_err(), "no signal yet");
        });
        runtime().block_on(async {
            raise(Signal::SIGINT).expect("a signal to this process");
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(soon().await.is_ok(), "the signal sent while nothing waited");
            assert!(soon().await.is_err(), "given once");
            raise(Signal::SIGTERM).expect("a signal to this process");
            assert!(soon().await.is_ok(), "SIGTERM too");
        });
    }
}
