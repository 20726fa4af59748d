//! Saved sessions on disk (`--save FILE`, `kubectl apitrace join FILE`).
//!
//! The file starts with [`MAGIC`] and continues with the join's inputs as
//! length-delimited `SavedInput` messages (see the proto file); a session
//! that keeps only the calls `--where` selected starts with [`CALLS_MAGIC`]
//! and holds those calls instead of their inputs. Reading stops at the first
//! entry that cannot be read and says at which byte, so that a file cut
//! short by a killed session can be trimmed and replayed.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use apitrace_join::{
    CallRecord, Input, InvalidSavedInput, SavedEntry, call_to_saved, calls_seen_to_saved, to_saved,
};
use apitrace_proto::{Event, SavedInput, event::Kind};
use prost::Message as _;

/// The first bytes of every saved session; the digit is the format's version.
pub const MAGIC: &[u8] = b"apitrace-session/v1\n";
/// The first bytes of a session that kept only its selected calls: a CLI
/// that reads only v1 says the file is newer rather than corrupt.
pub const CALLS_MAGIC: &[u8] = b"apitrace-session/v2\n";
/// What every version of the format starts with.
const MAGIC_STEM: &[u8] = b"apitrace-session/v";
/// No input comes near this (a TC event carries at most a 4 KiB head): a
/// larger length means the bytes are not an entry's.
const MAX_ENTRY_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("cannot open {}: {source}; pass a file written by `--save`", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {} at byte {offset}: {source}; pass a file written by `--save`", path.display())]
    Read {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error(
        "{} is empty: it is not a saved session; record one with `--save {}`",
        path.display(), path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "{} is not a saved apitrace session: it does not start with \"apitrace-session/v1\" (byte 0); pass a file written by `--save`",
        path.display()
    )]
    NotASession { path: PathBuf },
    #[error(
        "{} was saved in a newer format ({version}) than this kubectl-apitrace reads (v1, v2): replay it with a newer release",
        path.display()
    )]
    NewerFormat { path: PathBuf, version: String },
    #[error(
        "{} is truncated at byte {offset}: the entry there is incomplete (the session that wrote it may have been killed); to replay the entries before it, cut the file there: `truncate -s {offset} {}`",
        path.display(), path.display()
    )]
    Truncated { path: PathBuf, offset: u64 },
    #[error(
        "{} is corrupt at byte {offset}: {reason}; to replay the entries before it, cut the file there: `truncate -s {offset} {}`",
        path.display(), path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("cannot write the saved session {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// What a saved session keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Every input, as it is fed to the join: a replay can select anew.
    Inputs,
    /// The calls `--where` selected, the probes' status (their counters) and
    /// how many calls were seen: a long session waiting for a rare failure
    /// keeps that failure, not the hours of calls around it.
    SelectedCalls,
}

impl Keep {
    /// What a session keeps: with `--where` only what it selects, unless
    /// told `--save-all`.
    pub fn of(selecting: bool, save_all: bool) -> Self {
        if selecting && !save_all {
            Self::SelectedCalls
        } else {
            Self::Inputs
        }
    }
}

/// Writes a session's inputs as they are fed to the join, or its selected
/// calls as they are printed.
pub struct SavedWriter {
    path: PathBuf,
    out: BufWriter<File>,
    keep: Keep,
}

impl SavedWriter {
    /// Creates (or replaces) `path`. Only its owner can read it: a session
    /// saved with `--show-secrets` holds raw credentials.
    pub fn create(path: &Path, keep: Keep) -> Result<Self, SavedError> {
        let write_error = |source| SavedError::Write {
            path: path.to_owned(),
            source,
        };
        let mut options = File::options();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path).map_err(write_error)?;
        // The mode applies only to a new file; an old one may be readable.
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(write_error)?;
        let mut out = BufWriter::new(file);
        let magic = match keep {
            Keep::Inputs => MAGIC,
            Keep::SelectedCalls => CALLS_MAGIC,
        };
        out.write_all(magic).map_err(write_error)?;
        Ok(Self {
            path: path.to_owned(),
            out,
            keep,
        })
    }

    /// Saves `input` if the file keeps inputs; a file of selected calls
    /// keeps only the probes' status, for the counters of a replay's summary.
    pub fn save(&mut self, input: &Input) -> Result<(), SavedError> {
        let kept = match self.keep {
            Keep::Inputs => true,
            Keep::SelectedCalls => matches!(
                input,
                Input::Event {
                    event: Event {
                        kind: Some(Kind::Status(_))
                    },
                    ..
                }
            ),
        };
        match to_saved(input).filter(|_| kept) {
            Some(saved) => self.write(&saved),
            None => Ok(()),
        }
    }

    /// Saves a call the session selected and printed, if the file keeps
    /// those.
    pub fn save_call(&mut self, record: &CallRecord) -> Result<(), SavedError> {
        match self.keep {
            Keep::Inputs => Ok(()),
            Keep::SelectedCalls => self.write(&call_to_saved(record)),
        }
    }

    /// Writes the last entry of a file of selected calls, `calls_seen`, and
    /// flushes.
    pub fn finish(mut self, calls_seen: usize) -> Result<(), SavedError> {
        if self.keep == Keep::SelectedCalls {
            self.write(&calls_seen_to_saved(calls_seen as u64))?;
        }
        self.out.flush().map_err(|source| SavedError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn write(&mut self, saved: &SavedInput) -> Result<(), SavedError> {
        self.out
            .write_all(&saved.encode_length_delimited_to_vec())
            .map_err(|source| SavedError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// The inputs of a saved session, in the order they were saved.
pub struct SavedReader<R> {
    path: PathBuf,
    input: R,
    /// Where the next entry starts.
    offset: u64,
    failed: bool,
    /// Whether the file holds selected calls rather than inputs.
    calls: bool,
}

impl SavedReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self, SavedError> {
        let file = File::open(path).map_err(|source| SavedError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::new(path, BufReader::new(file))
    }
}

impl<R: BufRead> SavedReader<R> {
    /// Reads the header of `input`, which `path` names in errors.
    pub fn new(path: &Path, mut input: R) -> Result<Self, SavedError> {
        let path = path.to_owned();
        let mut header = Vec::with_capacity(MAGIC.len());
        (&mut input)
            .take(MAGIC.len() as u64)
            .read_to_end(&mut header)
            .map_err(|source| SavedError::Read {
                path: path.clone(),
                offset: 0,
                source,
            })?;
        if header.is_empty() {
            return Err(SavedError::Empty { path });
        }
        if header != MAGIC && header != CALLS_MAGIC {
            return Err(match header.strip_prefix(MAGIC_STEM) {
                Some(version) if version.first().is_some_and(u8::is_ascii_digit) => {
                    let digits = version.iter().take_while(|b| b.is_ascii_digit());
                    SavedError::NewerFormat {
                        version: format!("v{}", digits.map(|&b| char::from(b)).collect::<String>()),
                        path,
                    }
                }
                _ => SavedError::NotASession { path },
            });
        }
        Ok(Self {
            path,
            input,
            offset: MAGIC.len() as u64,
            failed: false,
            calls: header == CALLS_MAGIC,
        })
    }

    /// Whether the file holds the calls a session selected (`--where`)
    /// rather than its inputs: saved again, it can only keep calls.
    pub fn holds_calls(&self) -> bool {
        self.calls
    }

    fn next_entry(&mut self) -> Result<Option<SavedEntry>, SavedError> {
        let start = self.offset;
        let Some(length) = self.read_length()? else {
            return Ok(None);
        };
        let corrupt = |reason: String| SavedError::Corrupt {
            path: self.path.clone(),
            offset: start,
            reason,
        };
        if length > MAX_ENTRY_BYTES {
            return Err(corrupt(format!(
                "an entry of {length} bytes is larger than any input"
            )));
        }
        let mut entry = Vec::with_capacity(length as usize);
        let read = (&mut self.input)
            .take(length)
            .read_to_end(&mut entry)
            .map_err(|source| SavedError::Read {
                path: self.path.clone(),
                offset: start,
                source,
            })?;
        if (read as u64) < length {
            return Err(SavedError::Truncated {
                path: self.path.clone(),
                offset: start,
            });
        }
        self.offset += length;
        let saved = SavedInput::decode(entry.as_slice())
            .map_err(|error| corrupt(format!("the entry is not a saved input ({error})")))?;
        SavedEntry::try_from(saved)
            .map(Some)
            .map_err(|error: InvalidSavedInput| corrupt(error.to_string()))
    }

    /// The next entry's length; `None` at the end of the file.
    fn read_length(&mut self) -> Result<Option<u64>, SavedError> {
        let start = self.offset;
        let mut length = 0u64;
        for shift in (0..64).step_by(7) {
            let mut byte = [0u8];
            let read = self
                .input
                .read(&mut byte)
                .map_err(|source| SavedError::Read {
                    path: self.path.clone(),
                    offset: self.offset,
                    source,
                })?;
            if read == 0 {
                return if self.offset == start {
                    Ok(None)
                } else {
                    Err(SavedError::Truncated {
                        path: self.path.clone(),
                        offset: start,
                    })
                };
            }
            self.offset += 1;
            length |= u64::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                return Ok(Some(length));
            }
        }
        Err(SavedError::Corrupt {
            path: self.path.clone(),
            offset: start,
            reason: "an entry's length is not a varint".into(),
        })
    }
}

impl<R: BufRead> Iterator for SavedReader<R> {
    type Item = Result<SavedEntry, SavedError>;

    /// Ends after the first error: what follows a bad entry cannot be framed.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let entry = self.next_entry().transpose();
        self.failed = matches!(entry, Some(Err(_)));
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apitrace_join::{Workload, WorkloadKind};
    use apitrace_proto::AccessLog;

    fn inputs() -> Vec<Input> {
        vec![
            Input::Identity {
                ip: "10.0.0.7".parse().unwrap(),
                since_ns: 0,
                workload: Workload {
                    namespace: "shop".into(),
                    name: "orders".into(),
                    kind: WorkloadKind::Pod,
                    traced: true,
                },
            },
            Input::Event {
                event: Event {
                    kind: Some(Kind::AccessLog(AccessLog {
                        request_id: "x-1".into(),
                        // Long enough for a two-byte length.
                        path: "/".repeat(300),
                        ..AccessLog::default()
                    })),
                },
                now_ns: 5,
            },
            Input::Tick { now_ns: 6 },
        ]
    }

    /// The inputs saved to a file named after `test`, read back as bytes.
    fn saved_bytes(test: &str) -> Vec<u8> {
        let path = std::env::temp_dir().join(format!("apitrace-{test}-{}", std::process::id()));
        let mut writer = SavedWriter::create(&path, Keep::Inputs).unwrap();
        for input in &inputs() {
            writer.save(input).unwrap();
        }
        writer.save(&Input::End).unwrap();
        writer.finish(1).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        bytes
    }

    fn read(bytes: &[u8]) -> Result<Vec<SavedEntry>, SavedError> {
        SavedReader::new(Path::new("s.apitrace"), bytes)?.collect()
    }

    #[test]
    fn a_saved_session_reads_back_in_order() {
        let bytes = saved_bytes("in-order");
        assert!(bytes.starts_with(MAGIC));
        let back: Vec<Input> = read(&bytes)
            .unwrap()
            .into_iter()
            .map(|entry| match entry {
                SavedEntry::Input(input) => input,
                other => panic!("a file of inputs holds {other:?}"),
            })
            .collect();
        assert_eq!(format!("{back:?}"), format!("{:?}", inputs()));
    }

    /// With `--where`, a session keeps the calls it selected, the probes'
    /// status and the count of calls it saw, and none of the other inputs.
    #[test]
    fn a_file_of_selected_calls_keeps_the_calls_the_status_and_the_count() {
        let path = std::env::temp_dir().join(format!("apitrace-calls-{}", std::process::id()));
        let mut writer = SavedWriter::create(&path, Keep::of(true, false)).unwrap();
        let status = Input::Event {
            event: Event {
                kind: Some(Kind::Status(apitrace_proto::ProbeStatus {
                    node: "node-a".into(),
                    ..Default::default()
                })),
            },
            now_ns: 7,
        };
        for input in inputs().iter().chain([&status]) {
            writer.save(input).unwrap();
        }
        let record = crate::output::tests::record();
        writer.save_call(&record).unwrap();
        writer.finish(40).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(bytes.starts_with(CALLS_MAGIC));
        let entries = read(&bytes).unwrap();
        assert!(
            matches!(
                entries.as_slice(),
                [
                    SavedEntry::Input(Input::Event { now_ns: 7, .. }),
                    SavedEntry::Call(call),
                    SavedEntry::CallsSeen(40),
                ] if **call == record
            ),
            "{entries:?}"
        );
        // Without --where, or with --save-all, every input and no call.
        assert_eq!(Keep::of(false, false), Keep::Inputs);
        assert_eq!(Keep::of(true, true), Keep::Inputs);
    }

    #[test]
    fn a_cut_file_names_the_byte_its_last_entry_starts_at() {
        let bytes = saved_bytes("cut");
        let whole = read(&bytes).unwrap().len();
        // Every cut inside the last entry, including inside its length.
        let last_start = {
            let mut reader = SavedReader::new(Path::new("s"), bytes.as_slice()).unwrap();
            for _ in 0..whole - 1 {
                reader.next().unwrap().unwrap();
            }
            reader.offset
        };
        for cut in last_start + 1..bytes.len() as u64 {
            let error = read(&bytes[..cut as usize]).unwrap_err();
            assert!(
                matches!(error, SavedError::Truncated { offset, .. } if offset == last_start),
                "cut at {cut}: {error}"
            );
            let message = error.to_string();
            assert!(
                message.contains(&format!("truncated at byte {last_start}"))
                    && message.contains(&format!("truncate -s {last_start} s.apitrace")),
                "{message}"
            );
        }
        // Cut at an entry's start: the entries before it, no error.
        assert_eq!(
            read(&bytes[..last_start as usize]).unwrap().len(),
            whole - 1
        );
    }

    #[test]
    fn bad_files_say_what_they_are() {
        let message = |bytes: &[u8]| read(bytes).unwrap_err().to_string();
        assert!(message(b"").contains("s.apitrace is empty"));
        assert!(
            message(b"{\"time\": \"2026\"}\n")
                .contains("s.apitrace is not a saved apitrace session")
        );
        assert!(message(b"apitrace-session/v3\n").contains("newer format (v3)"));

        let mut corrupt = MAGIC.to_vec();
        corrupt.extend([0x03, 0xff, 0xff, 0xff]);
        let error = message(&corrupt);
        assert!(
            error.contains(&format!("corrupt at byte {}", MAGIC.len())),
            "{error}"
        );
        let mut huge = MAGIC.to_vec();
        huge.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(message(&huge).contains("larger than any input"));
        let mut endless = MAGIC.to_vec();
        endless.extend([0xff; 11]);
        assert!(message(&endless).contains("not a varint"));
        // A valid message that is not a valid input: an empty entry.
        let mut empty_entry = MAGIC.to_vec();
        empty_entry.push(0x00);
        assert!(message(&empty_entry).contains("holds no input"));
    }

    #[cfg(unix)]
    #[test]
    fn only_the_owner_can_read_a_saved_session() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("apitrace-mode-{}", std::process::id()));
        std::fs::write(&path, "readable by all").unwrap();
        SavedWriter::create(&path, Keep::Inputs)
            .unwrap()
            .finish(0)
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(mode & 0o777, 0o600);
    }
}
