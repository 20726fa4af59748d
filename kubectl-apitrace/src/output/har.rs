//! `-o har`: the calls as an HTTP Archive (HAR 1.2), which browsers' network
//! panels and HAR viewers open. What HAR has no field for (the wire, the hops,
//! the identities) rides along in each entry's `_apitrace`: the record itself.

use apitrace_join::CallRecord;
use serde_json::{Value, json};

/// The archive of `records`, in the order given.
pub fn archive(records: &[CallRecord]) -> Value {
    json!({
        "log": {
            "version": "1.2",
            "creator": {
                "name": "kubectl-apitrace",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "entries": records.iter().map(entry).collect::<Vec<_>>(),
        }
    })
}

fn entry(record: &CallRecord) -> Value {
    let millis = |micros: i64| micros.max(0) as f64 / 1_000.0;
    // HAR's phases from the sidecar's view: waiting is the time upstream (the
    // app, or the next hop), receiving the rest of the call's time in the
    // sidecar; sending is part of the former, as Envoy does not split it.
    let (total, wait) = record
        .latency
        .as_ref()
        .map_or((0.0, 0.0), |l| (millis(l.total_us), millis(l.upstream_us)));
    let wait = wait.min(total);
    let authority = if record.authority.is_empty() {
        socket(&record.dst.ip, record.dst.port)
    } else {
        record.authority.clone()
    };
    let body = |bytes: Option<u64>| bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
    json!({
        "startedDateTime": record.time,
        "time": total,
        "request": {
            "method": record.method,
            "url": format!("http://{authority}{}", record.path),
            "httpVersion": record.protocol,
            "cookies": [],
            "headers": request_headers(record, &authority),
            "queryString": query_string(&record.path),
            "headersSize": -1,
            "bodySize": body(record.request_body_bytes),
        },
        "response": {
            "status": record.status,
            "statusText": reason(record.status),
            "httpVersion": record.protocol,
            "cookies": [],
            "headers": [],
            "content": {
                "size": record.response_body_bytes.unwrap_or_default(),
                "mimeType": "x-unknown",
            },
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": body(record.response_body_bytes),
        },
        "cache": {},
        "timings": {
            "send": 0,
            "wait": wait,
            "receive": total - wait,
        },
        "serverIPAddress": record.dst.ip,
        // The caller's port names its connection.
        "connection": record.src.port.to_string(),
        "_apitrace": record,
    })
}

/// The headers the layers saw: the host, the request id, and the credentials
/// as the record holds them (redacted unless the session showed secrets).
fn request_headers(record: &CallRecord, authority: &str) -> Vec<Value> {
    let header = |name: &str, value: &str| json!({ "name": name, "value": value });
    let mut headers = vec![header("host", authority)];
    if !record.request_id.is_empty() {
        headers.push(header("x-request-id", &record.request_id));
    }
    if let Some(auth) = &record.auth {
        let credentials = match &auth.token {
            Some(token) => token.clone(),
            None => format!("<redacted {}>", auth.fingerprint),
        };
        headers.push(header(
            "authorization",
            &format!("{} {credentials}", auth.scheme),
        ));
    }
    headers
}

/// The query's parameters, as sent (not percent-decoded).
fn query_string(path: &str) -> Vec<Value> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            json!({ "name": name, "value": value })
        })
        .collect()
}

fn reason(status: u32) -> &'static str {
    u16::try_from(status)
        .ok()
        .and_then(|status| hyper::StatusCode::from_u16(status).ok())
        .and_then(|status| status.canonical_reason())
        .unwrap_or("")
}

fn socket(ip: &str, port: u32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::record;

    fn validate(archive: &Value) {
        let schema: Value = serde_json::from_str(include_str!("har-1.2.schema.json")).unwrap();
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();
        let errors: Vec<String> = validator
            .iter_errors(archive)
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}\n{archive:#}");
    }

    #[test]
    fn the_archive_is_valid_har_1_2() {
        let mut failed = record();
        failed.status = 0;
        failed.latency = None;
        failed.auth = None;
        failed.request_id = String::new();
        failed.path = "/search?q=orders&page=2&flag".into();
        failed.authority = String::new();
        failed.dst.ip = "fd00::14".into();
        let archive = archive(&[record(), failed]);
        validate(&archive);

        let entries = archive["log"]["entries"].as_array().unwrap();
        let first = &entries[0];
        assert_eq!(first["request"]["url"], "http://nginx/status");
        assert_eq!(first["response"]["statusText"], "OK");
        assert_eq!(first["time"], 1.966);
        assert_eq!(first["timings"]["wait"], 1.091);
        assert_eq!(first["_apitrace"]["request_id"], record().request_id);
        let second = &entries[1];
        assert_eq!(
            second["request"]["url"],
            "http://[fd00::14]:80/search?q=orders&page=2&flag"
        );
        assert_eq!(
            second["request"]["queryString"],
            json!([
                {"name": "q", "value": "orders"},
                {"name": "page", "value": "2"},
                {"name": "flag", "value": ""},
            ])
        );
    }

    #[test]
    fn credentials_stay_redacted_unless_the_record_holds_them() {
        let archive = archive(&[record()]);
        let headers = &archive["log"]["entries"][0]["request"]["headers"];
        assert!(
            headers.to_string().contains("Bearer <redacted sha256:00>"),
            "{headers}"
        );
        let mut shown = record();
        shown.auth.as_mut().unwrap().token = Some("eyJ.eyJ.sig".into());
        let archive = super::archive(&[shown]);
        assert!(archive.to_string().contains("Bearer eyJ.eyJ.sig"));
    }

    /// The schema is a real check: archives that break HAR 1.2 fail it.
    #[test]
    fn the_schema_refuses_what_har_does_not_allow() {
        let schema: Value = serde_json::from_str(include_str!("har-1.2.schema.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let good = archive(&[record()]);
        assert!(validator.is_valid(&good));
        let broken = |path: &[&str], change: fn(&mut Value)| {
            let mut archive = good.clone();
            let mut at = &mut archive["log"]["entries"][0];
            for key in path {
                at = &mut at[*key];
            }
            change(at);
            validator.is_valid(&archive)
        };
        assert!(!broken(&["timings"], |t| {
            t.as_object_mut().unwrap().remove("wait");
        }));
        assert!(!broken(&["request"], |r| r["cookies"] = json!(null)));
        assert!(!broken(&[], |e| e["extra"] = json!(1)));
        assert!(!broken(&[], |e| e["startedDateTime"] = json!("yesterday")));
        assert!(broken(&[], |e| e["_custom"] = json!(1)));
    }
}
