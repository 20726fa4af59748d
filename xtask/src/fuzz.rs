//! `cargo xtask fuzz [SECONDS]`: every fuzz target in fuzz/, each for SECONDS.

use crate::{
    setup::cargo_fuzz,
    shell::{self, cargo, step, workspace},
};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// How long each target runs, in seconds.
    #[arg(default_value_t = 20)]
    pub seconds: u64,
}

/// The fuzz targets, each for `seconds` (CI: a smoke run; by hand, longer).
/// A crash fails the run; libFuzzer leaves the input in fuzz/artifacts. Once
/// understood and fixed, it goes to fuzz/regressions/TARGET, which every run
/// replays before fuzzing.
const FUZZ_TARGETS: [&str; 8] = [
    "http_head",
    "http2_frames",
    "tc_event",
    "saved_session",
    "jwt",
    "als_message",
    "wasm_batch",
    "where_expr",
];

pub fn run(options: &Options) -> anyhow::Result<()> {
    let seconds = options.seconds;
    cargo_fuzz()?;
    let fuzz_dir = workspace().join("fuzz");
    for target in FUZZ_TARGETS {
        step("fuzz", &format!("{target} for {seconds} s"));
        // The corpus grows in fuzz/corpus (not committed); the inputs that
        // once failed, in fuzz/regressions (committed), run first every time.
        let mut command = cargo();
        command
            .current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target])
            .arg(format!("corpus/{target}"));
        let regressions = format!("regressions/{target}");
        if fuzz_dir.join(&regressions).is_dir() {
            command.arg(regressions);
        }
        std::fs::create_dir_all(fuzz_dir.join("corpus").join(target))?;
        shell::run(command.args(["--", &format!("-max_total_time={seconds}")]))?;
    }
    Ok(())
}
