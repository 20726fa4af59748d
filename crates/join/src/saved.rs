//! The join's inputs as a saved session keeps them ([`SavedInput`]), and back:
//! `--save` writes what the join was fed, and `kubectl apitrace join` feeds it
//! again, so that the replay gives the records the session printed. A session
//! saved with `--where` keeps the records it selected instead.

use std::net::IpAddr;

use apitrace_proto::{Identity, SavedCall, SavedInput, Tick, saved_input::Kind};

use crate::{
    CallRecord, Input,
    directory::{Workload, WorkloadKind},
};

/// What one entry of a saved session holds.
// An input is as large as the events it carries; each entry is read, fed and
// dropped, and boxing it would cost a replay one allocation per input.
#[expect(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SavedEntry {
    /// An input, to feed the join.
    Input(Input),
    /// A call the session selected, joined already.
    Call(Box<CallRecord>),
    /// How many calls the session joined in all, selected or not.
    CallsSeen(u64),
}

/// Why a saved input cannot be fed to the join.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidSavedInput {
    /// The entry's kind is none this version knows.
    #[error("the entry holds no input (written by a newer kubectl-apitrace?)")]
    Empty,
    /// An identity's address, as it was written.
    #[error("the identity's address {0:?} is not an IP address")]
    Address(String),
    /// An identity's kind, as it was written.
    #[error("the identity's kind {0:?} is not Pod, Service, Node or External")]
    Kind(String),
    /// A saved call whose JSON is not a record, and why.
    #[error("the saved call is not a record ({0})")]
    Call(String),
}

/// `input` as a saved session keeps it; `None` for [`Input::End`], which the
/// end of the file stands for.
pub fn to_saved(input: &Input) -> Option<SavedInput> {
    let (received_unix_nano, kind) = match input {
        Input::Event { event, now_ns } => (*now_ns, Kind::Event(event.clone())),
        Input::Identity {
            ip,
            since_ns,
            workload,
        } => (
            0,
            Kind::Identity(Identity {
                ip: ip.to_string(),
                since_unix_nano: *since_ns,
                namespace: workload.namespace.clone(),
                name: workload.name.clone(),
                kind: workload.kind.as_str().to_owned(),
                traced: workload.traced,
            }),
        ),
        Input::Tick { now_ns } => (*now_ns, Kind::Tick(Tick {})),
        Input::End => return None,
    };
    Some(SavedInput {
        received_unix_nano,
        kind: Some(kind),
    })
}

/// `record` as a session saved with `--where` keeps it.
pub fn call_to_saved(record: &CallRecord) -> SavedInput {
    SavedInput {
        received_unix_nano: 0,
        kind: Some(Kind::Call(SavedCall {
            record_json: serde_json::to_string(record).expect("a record serialises"),
        })),
    }
}

/// The count of calls a session saved with `--where` ends with.
pub fn calls_seen_to_saved(calls: u64) -> SavedInput {
    SavedInput {
        received_unix_nano: 0,
        kind: Some(Kind::CallsSeen(calls)),
    }
}

impl TryFrom<SavedInput> for SavedEntry {
    type Error = InvalidSavedInput;

    fn try_from(saved: SavedInput) -> Result<Self, Self::Error> {
        let now_ns = saved.received_unix_nano;
        Ok(SavedEntry::Input(
            match saved.kind.ok_or(InvalidSavedInput::Empty)? {
                Kind::Call(call) => {
                    return serde_json::from_str(&call.record_json)
                        .map(|record| SavedEntry::Call(Box::new(record)))
                        .map_err(|error| InvalidSavedInput::Call(error.to_string()));
                }
                Kind::CallsSeen(calls) => return Ok(SavedEntry::CallsSeen(calls)),
                Kind::Event(event) => Input::Event { event, now_ns },
                Kind::Tick(Tick {}) => Input::Tick { now_ns },
                Kind::Identity(identity) => Input::Identity {
                    ip: identity
                        .ip
                        .parse::<IpAddr>()
                        .map_err(|_| InvalidSavedInput::Address(identity.ip.clone()))?,
                    since_ns: identity.since_unix_nano,
                    workload: Workload {
                        kind: WorkloadKind::parse(&identity.kind)
                            .ok_or_else(|| InvalidSavedInput::Kind(identity.kind.clone()))?,
                        namespace: identity.namespace,
                        name: identity.name,
                        traced: identity.traced,
                    },
                },
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apitrace_proto::{AccessLog, Event, event};

    fn entry(saved: SavedInput) -> Result<SavedEntry, InvalidSavedInput> {
        SavedEntry::try_from(saved)
    }

    fn round_trip(input: &Input) -> Input {
        match entry(to_saved(input).expect("a saved form")).expect("a valid input") {
            SavedEntry::Input(input) => input,
            other => panic!("not an input: {other:?}"),
        }
    }

    #[test]
    fn every_input_survives_saving() {
        let event = Event {
            kind: Some(event::Kind::AccessLog(AccessLog {
                request_id: "x-1".into(),
                status: 503,
                ..AccessLog::default()
            })),
        };
        let Input::Event {
            event: back,
            now_ns,
        } = round_trip(&Input::Event {
            event: event.clone(),
            now_ns: 42,
        })
        else {
            panic!("not an event");
        };
        assert_eq!((back, now_ns), (event, 42));

        let workload = Workload {
            namespace: "shop".into(),
            name: "orders-7f9c".into(),
            kind: WorkloadKind::Service,
            traced: true,
        };
        let ip: IpAddr = "fd00::14".parse().unwrap();
        let Input::Identity {
            ip: back_ip,
            since_ns,
            workload: back,
        } = round_trip(&Input::Identity {
            ip,
            since_ns: 7,
            workload: workload.clone(),
        })
        else {
            panic!("not an identity");
        };
        assert_eq!((back_ip, since_ns, back), (ip, 7, workload));

        assert!(matches!(
            round_trip(&Input::Tick { now_ns: 9 }),
            Input::Tick { now_ns: 9 }
        ));
        assert!(to_saved(&Input::End).is_none());
    }

    #[test]
    fn invalid_entries_say_what_is_wrong() {
        let identity = |ip: &str, kind: &str| SavedInput {
            received_unix_nano: 0,
            kind: Some(Kind::Identity(Identity {
                ip: ip.into(),
                kind: kind.into(),
                ..Identity::default()
            })),
        };
        assert_eq!(
            entry(identity("10.0.0.300", "Pod")).unwrap_err(),
            InvalidSavedInput::Address("10.0.0.300".into())
        );
        assert_eq!(
            entry(identity("10.0.0.3", "Deployment")).unwrap_err(),
            InvalidSavedInput::Kind("Deployment".into())
        );
        assert_eq!(
            entry(SavedInput::default()).unwrap_err(),
            InvalidSavedInput::Empty
        );
        let not_a_record = SavedInput {
            received_unix_nano: 0,
            kind: Some(Kind::Call(SavedCall {
                record_json: r#"{"time": 5}"#.into(),
            })),
        };
        assert!(
            matches!(entry(not_a_record), Err(InvalidSavedInput::Call(why)) if why.contains("expected a string")),
        );
    }

    #[test]
    fn a_selected_call_and_the_count_of_calls_survive_saving() {
        let mut joiner = crate::Joiner::new(crate::JoinConfig::default());
        let mut records = Vec::new();
        let log = crate::fixtures::access_log(AccessLog {
            request_id: "x-1".into(),
            status: 503,
            ..crate::fixtures::entry()
        });
        joiner.apply(
            Input::Event {
                event: log,
                now_ns: 1,
            },
            &mut records,
        );
        joiner.apply(Input::End, &mut records);
        let [record] = records.as_slice() else {
            panic!("one call: {records:?}");
        };
        let Ok(SavedEntry::Call(back)) = entry(call_to_saved(record)) else {
            panic!("not a call");
        };
        assert_eq!(*back, *record);
        assert!(matches!(
            entry(calls_seen_to_saved(12)),
            Ok(SavedEntry::CallsSeen(12))
        ));
    }
}
