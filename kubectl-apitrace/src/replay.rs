//! `kubectl apitrace join FILE`: a saved session through the join again.

use std::{io, process::ExitCode};

use apitrace_join::JoinConfig;

use crate::{
    args::JoinArgs,
    output::{Destination, Printer},
    pipeline::{BATCH, Pipeline},
    saved::SavedReader,
};

pub fn run(args: JoinArgs) -> anyhow::Result<ExitCode> {
    let inputs = SavedReader::open(&args.file)?;
    let output = &args.output;
    let printer = Printer::new(
        io::stdout().lock(),
        output.format,
        output.follow,
        Destination::stdout(),
    )?;
    let config = JoinConfig {
        show_secrets: output.show_secrets,
        ..JoinConfig::default()
    };
    let mut pipeline = Pipeline::new(config, None, printer).selecting(output.select.clone());
    let mut batch = Vec::with_capacity(BATCH);
    for input in inputs {
        match input {
            Ok(input) => batch.push(input),
            // What came before a bad entry is joined (and printed, when
            // followed) before the error ends the replay.
            Err(error) => {
                pipeline.feed_all(batch)?;
                return Err(error.into());
            }
        }
        if batch.len() == BATCH {
            pipeline.feed_all(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))?;
        }
    }
    pipeline.feed_all(batch)?;
    let outcome = pipeline.finish()?;
    eprintln!("{}", outcome.summary(None));
    Ok(ExitCode::SUCCESS)
}
