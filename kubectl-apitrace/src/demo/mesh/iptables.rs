//! A sidecar pod's traffic capture: the nat table Istio's init container
//! installs with the injector's defaults (`istio-iptables -p 15001 -z 15006
//! -u 1337 -m REDIRECT -i '*' -b '*' -d 15090,15021,15020`), for IPv4 and
//! IPv6, rule for rule as `tools/istio-iptables/pkg/capture/run.go`
//! (`IptablesConfigurator.Run`) builds it in Istio 1.30.3.
//!
//! - Inbound: every TCP connection to the pod goes to the sidecar's inbound
//!   port 15006, but for the agent's and the proxy's own ports.
//! - Outbound: every TCP connection the pod opens goes to the sidecar's
//!   outbound port 15001, but for the sidecar's own (uid and gid 1337), its
//!   connections to the app from the inbound passthrough address, and
//!   connections to localhost. The sidecar's connections to the pod itself
//!   (not to localhost) go back through the inbound capture.

use apitrace_proto::istio;

/// The ports the inbound capture leaves alone: HBONE, Prometheus, the agent's
/// health and status ports.
const INBOUND_EXCLUDED_PORTS: [u16; 4] = [15008, 15090, 15021, 15020];

/// The rules for one address family, in `iptables-restore` form; with
/// `loss_percent`, a random drop of inbound packets to `app_port` on `eth0`
/// (raw table, before the capture): TC ingress runs before netfilter, so the
/// probe sees each dropped packet and then its retransmission.
pub fn capture(ipv6: bool, app_port: u16, loss_percent: Option<u8>) -> String {
    let (localhost, passthrough_bind) = if ipv6 {
        (
            "::1/128".to_owned(),
            format!("{}/128", istio::INBOUND_PASSTHROUGH_BIND_V6),
        )
    } else {
        (
            "127.0.0.1/32".to_owned(),
            format!("{}/32", istio::INBOUND_PASSTHROUGH_BIND_V4),
        )
    };
    let uid = istio::PROXY_UID;
    let inbound = istio::INBOUND_CAPTURE_PORT;
    let outbound = istio::OUTBOUND_CAPTURE_PORT;
    let mut rules = String::from(
        "*nat\n\
         :ISTIO_INBOUND - [0:0]\n\
         :ISTIO_IN_REDIRECT - [0:0]\n\
         :ISTIO_OUTPUT - [0:0]\n\
         :ISTIO_REDIRECT - [0:0]\n\
         -A PREROUTING -p tcp -j ISTIO_INBOUND\n\
         -A OUTPUT -j ISTIO_OUTPUT\n",
    );
    for port in INBOUND_EXCLUDED_PORTS {
        rules.push_str(&format!(
            "-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN\n"
        ));
    }
    rules.push_str(&format!(
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n\
         -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {inbound}\n\
         -A ISTIO_OUTPUT -o lo -s {passthrough_bind} -j RETURN\n\
         -A ISTIO_OUTPUT -o lo ! -d {localhost} -p tcp ! --dport 15008 -m owner --uid-owner {uid} -j ISTIO_IN_REDIRECT\n\
         -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {uid} -j RETURN\n\
         -A ISTIO_OUTPUT -m owner --uid-owner {uid} -j RETURN\n\
         -A ISTIO_OUTPUT -o lo ! -d {localhost} -p tcp ! --dport 15008 -m owner --gid-owner {uid} -j ISTIO_IN_REDIRECT\n\
         -A ISTIO_OUTPUT -o lo -m owner ! --gid-owner {uid} -j RETURN\n\
         -A ISTIO_OUTPUT -m owner --gid-owner {uid} -j RETURN\n\
         -A ISTIO_OUTPUT -d {localhost} -j RETURN\n\
         -A ISTIO_OUTPUT -j ISTIO_REDIRECT\n\
         -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {outbound}\n\
         COMMIT\n"
    ));
    if let Some(percent) = loss_percent {
        rules.push_str(&format!(
            "*raw\n\
             -A PREROUTING -i eth0 -p tcp --dport {app_port} -m statistic --mode random --probability {:.2} -j DROP\n\
             COMMIT\n",
            f64::from(percent) / 100.0
        ));
    }
    rules
}
