//! A gRPC call's status as a sidecar's access log carries it.
//!
//! gRPC sends its status in the response's trailers (`grpc-status`,
//! `grpc-message`), after an HTTP 200: the HTTP status says nothing about
//! whether the call failed. A server that fails a call before sending any
//! message answers Trailers-Only: the status is in the response headers and
//! there are no trailers. Envoy logs the headers and trailers the access-log
//! config names (Istio's `envoyHttpAls` provider's
//! `additionalResponseHeadersToLog` and `additionalResponseTrailersToLog`),
//! under their lower-case names, so both are looked at, trailers first.

use envoy_types::pb::envoy::data::accesslog::v3::HttpResponseProperties;

use apitrace_proto::access_log::GRPC_STATUS_HEADERS as LOGGED;

/// The response's gRPC status code and message; `None` and empty when it
/// carried none (not gRPC, or a call reset before its status).
pub fn of(response: &HttpResponseProperties) -> (Option<u32>, String) {
    let maps = [&response.response_trailers, &response.response_headers];
    let Some(map) = maps.into_iter().find(|map| map.contains_key(LOGGED[0])) else {
        return (None, String::new());
    };
    let status = map.get(LOGGED[0]).and_then(|code| code.trim().parse().ok());
    let message = map.get(LOGGED[1]).cloned().unwrap_or_default();
    (status, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(headers: &[(&str, &str)], trailers: &[(&str, &str)]) -> HttpResponseProperties {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect()
        };
        HttpResponseProperties {
            response_headers: map(headers),
            response_trailers: map(trailers),
            ..HttpResponseProperties::default()
        }
    }

    #[test]
    fn the_status_is_read_from_the_trailers_then_from_a_trailers_only_response() {
        let streamed = response(
            &[("content-type", "application/grpc")],
            &[("grpc-status", "14"), ("grpc-message", "eu is down")],
        );
        assert_eq!(of(&streamed), (Some(14), "eu is down".to_owned()));
        let trailers_only = response(&[("grpc-status", "5"), ("grpc-message", "no order 7")], &[]);
        assert_eq!(of(&trailers_only), (Some(5), "no order 7".to_owned()));
        assert_eq!(
            of(&response(&[], &[("grpc-status", "0")])),
            (Some(0), String::new())
        );
        // Not gRPC, and a status that is not a number.
        assert_eq!(of(&response(&[], &[])), (None, String::new()));
        assert_eq!(of(&response(&[("grpc-status", "ok")], &[])).0, None);
    }
}
