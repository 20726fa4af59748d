//! `kubectl apitrace join FILE`: a saved session through the join again.

use std::{io, process::ExitCode};

use apitrace_join::{JoinConfig, SavedEntry};

use crate::{
    args::JoinArgs,
    output::{Destination, Printer},
    pipeline::{BATCH, Pipeline},
    saved::{Keep, SavedReader, SavedWriter},
};

pub fn run(args: JoinArgs) -> anyhow::Result<ExitCode> {
    let entries = SavedReader::open(&args.file)?;
    let holds_calls = entries.holds_calls();
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
    let saved = match &args.save.file {
        Some(path) if same_file(path, &args.file) => anyhow::bail!(
            "--save {} is the file being replayed, which saving would overwrite: save to another file",
            path.display()
        ),
        Some(path) => {
            let keep = if holds_calls {
                Keep::SelectedCalls
            } else {
                Keep::of(output.select.is_some(), args.save.all)
            };
            Some(SavedWriter::create(path, keep)?)
        }
        None => None,
    };
    let mut pipeline =
        Pipeline::new(config, saved, printer).selecting(output.select.clone(), output.until);
    let mut batch = Vec::with_capacity(BATCH);
    for entry in entries {
        match entry {
            Ok(SavedEntry::Input(input)) => batch.push(input),
            // A file of selected calls: each is printed as it was saved,
            // after the probes' status saved before it.
            Ok(SavedEntry::Call(record)) => {
                pipeline.feed_all(std::mem::take(&mut batch))?;
                pipeline.feed_call(*record)?;
            }
            Ok(SavedEntry::CallsSeen(calls)) => pipeline.calls_seen(calls),
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
        // A file of inputs is read no further once enough calls matched;
        // one of calls to its end, where it says how many its session saw.
        if pipeline.until_reached().is_some() && !holds_calls {
            break;
        }
    }
    pipeline.feed_all(batch)?;
    let outcome = pipeline.finish()?;
    eprintln!("{}", outcome.report(None));
    Ok(ExitCode::SUCCESS)
}

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    matches!(
        (std::fs::canonicalize(a), std::fs::canonicalize(b)),
        (Ok(a), Ok(b)) if a == b
    )
}
