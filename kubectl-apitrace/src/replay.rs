//! `kubectl apitrace join FILE`: a saved session through the join again.

use std::{io, process::ExitCode};

use apitrace_join::JoinConfig;

use crate::{
    args::JoinArgs,
    output::{Destination, Printer},
    pipeline::Pipeline,
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
    let mut pipeline = Pipeline::new(config, None, printer);
    for input in inputs {
        pipeline.feed(input?)?;
    }
    let outcome = pipeline.finish()?;
    eprintln!("{}", outcome.summary(None));
    Ok(ExitCode::SUCCESS)
}
