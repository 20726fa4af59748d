//! Errors worded for a person: what the API server said, and an error with
//! its causes on one line, as both binaries print them.

use std::{error::Error, fmt};

/// The error and its causes, joined by ": ", each said once: many errors
/// (kube's, io's through ours) already repeat their cause in their own text.
/// A status the API server answered is worded by [`ApiText`].
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        next = cause.source();
        let said = match cause.downcast_ref::<kube::Error>() {
            Some(error) => ApiText(error).to_string(),
            None => cause.to_string(),
        };
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

/// A client error as a message: kube's own text for a status the API server
/// answered repeats the whole status object in Rust's debug notation
/// (`ApiError: ... (Status { status: Some(Failure), code: 403, ... })`).
/// This says the server's message, its reason and the HTTP code, and what to
/// do about the refusals a user can fix; other errors keep kube's text.
pub struct ApiText<'a>(pub &'a kube::Error);

impl fmt::Display for ApiText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kube::Error::Api(status) = self.0 else {
            return self.0.fmt(f);
        };
        // "message: reason", as the status itself reads, so that an error
        // chain that goes on to the status does not say it twice.
        write!(
            f,
            "{}: {} (HTTP {})",
            status.message, status.reason, status.code
        )?;
        match status.code {
            401 => write!(
                f,
                "; the cluster refused the kubeconfig's credentials: log in again, or pick another --context"
            ),
            403 => write!(
                f,
                "; the account lacks a permission a session needs: bind it to manifests/user-clusterrole.yaml, or ask a cluster admin to"
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    #[test]
    fn a_refusal_reads_as_the_servers_message_and_says_what_to_do() {
        let forbidden = kube::Error::Api(
            Status::failure("leases.coordination.k8s.io is forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        );
        let text = ApiText(&forbidden).to_string();
        assert!(
            text.starts_with("leases.coordination.k8s.io is forbidden: Forbidden (HTTP 403); "),
            "{text}"
        );
        assert!(text.contains("manifests/user-clusterrole.yaml"), "{text}");
        assert!(!text.contains("Status {"), "{text}");
    }

    #[test]
    fn a_chain_says_each_cause_once_and_a_refusal_as_the_server_worded_it() {
        let error = crate::apply::ApplyError::Create {
            what: "Lease apitrace/apitrace-abc".into(),
            source: kube::Error::Api(
                Status::failure("injected", "InternalError")
                    .with_code(500)
                    .boxed(),
            ),
        };
        assert_eq!(
            error_chain(&error),
            "creating Lease apitrace/apitrace-abc: injected: InternalError (HTTP 500)"
        );
    }

    #[test]
    fn other_errors_keep_kubes_text() {
        let other = kube::Error::LinesCodecMaxLineLengthExceeded;
        assert_eq!(ApiText(&other).to_string(), other.to_string());
    }
}
