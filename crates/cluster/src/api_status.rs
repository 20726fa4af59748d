//! What an error the API server answered means, read as apimachinery reads it
//! (`IsNotFound` and `IsConflict` in `k8s.io/apimachinery/pkg/api/errors`):
//! by the Status's reason, and by its HTTP code when the reason is not one
//! Kubernetes defines.
//!
//! kube's `Status::is_not_found` and `Status::is_conflict` read the reason
//! only (kube-core 5 asks whether the reason it looks for is a known one, not
//! the one the server sent, so the code never counts). A 404 whose body is
//! not a Status, as for a resource no CRD serves behind some proxies, carries
//! kube's stand-in reason, and must still read as not found.

use kube::core::response::reason;

/// The object, or the resource itself, is not there (404).
pub fn is_not_found(error: &kube::Error) -> bool {
    reason_or_code(error, reason::NOT_FOUND, 404)
}

/// Someone changed the object since it was read (409).
pub fn is_conflict(error: &kube::Error) -> bool {
    reason_or_code(error, reason::CONFLICT, 409)
}

fn reason_or_code(error: &kube::Error, wanted: &str, code: u16) -> bool {
    matches!(
        error,
        kube::Error::Api(status)
            if status.reason == wanted || (!reason::is_known(&status.reason) && status.code == code)
    )
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn answered(reason: &str, code: u16) -> kube::Error {
        kube::Error::Api(Status::failure("injected", reason).with_code(code).boxed())
    }

    #[test]
    fn a_status_is_read_by_its_reason_and_by_its_code_when_the_reason_is_unknown() {
        assert!(is_not_found(&answered("NotFound", 404)));
        // What kube makes of a 404 whose body is not a Status.
        assert!(is_not_found(&answered("Failed to parse error data", 404)));
        assert!(!is_not_found(&answered("InternalError", 500)));
        assert!(!is_not_found(&answered("Conflict", 409)));
        assert!(is_conflict(&answered("Conflict", 409)));
        assert!(is_conflict(&answered("", 409)));
        assert!(!is_conflict(&answered("NotFound", 404)));
        assert!(!is_not_found(&kube::Error::LinesCodecMaxLineLengthExceeded));
    }
}
