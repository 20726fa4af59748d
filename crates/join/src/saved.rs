//! The join's inputs as a saved session keeps them ([`SavedInput`]), and back:
//! `--save` writes what the join was fed, and `kubectl apitrace join` feeds it
//! again, so that the replay gives the records the session printed.

use std::net::IpAddr;

use apitrace_proto::{Identity, SavedInput, Tick, saved_input::Kind};

use crate::{
    Input,
    directory::{Workload, WorkloadKind},
};

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

impl TryFrom<SavedInput> for Input {
    type Error = InvalidSavedInput;

    fn try_from(saved: SavedInput) -> Result<Self, Self::Error> {
        let now_ns = saved.received_unix_nano;
        Ok(match saved.kind.ok_or(InvalidSavedInput::Empty)? {
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apitrace_proto::{AccessLog, Event, event};

    fn round_trip(input: &Input) -> Input {
        Input::try_from(to_saved(input).expect("a saved form")).expect("a valid input")
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
            Input::try_from(identity("10.0.0.300", "Pod")).unwrap_err(),
            InvalidSavedInput::Address("10.0.0.300".into())
        );
        assert_eq!(
            Input::try_from(identity("10.0.0.3", "Deployment")).unwrap_err(),
            InvalidSavedInput::Kind("Deployment".into())
        );
        assert_eq!(
            Input::try_from(SavedInput::default()).unwrap_err(),
            InvalidSavedInput::Empty
        );
    }
}
