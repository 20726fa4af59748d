#!/usr/bin/env bash
# The real thing on kind with Istio: the paper's example, sleep -> nginx.
#
# Needs docker, kind, kubectl, istioctl and the release's linux/amd64 CLI and
# probe image (`cargo xtask release --platform linux/amd64`, which builds both
# Linux probes: the image holds both architectures). It creates a kind cluster
# (deleted at the end unless KEEP=1), installs Istio under the revision
# `canary` with the revision tag `prod` pointing to it (so the mesh config is
# `istio-canary`, and the pods' own `istio.io/rev=prod` label names a tag, not
# a revision) and with `accessLogFile: /dev/stdout` (the legacy log a
# Telemetry would turn off), loads the release's probe image archive (the CLI
# is pinned to its digest, so the sessions run exactly that image, with no
# --probe-image), applies manifests/, deploys sleep and nginx with sidecars,
# and runs a 40 s session on nginx while sleep calls it, as a user bound to
# the apitrace-user ClusterRole only (a ServiceAccount's token in a kubeconfig
# of its own), not as cluster-admin. It checks:
#   1. the session prints records joined from all three layers (als, wasm, tc)
#      for sleep's calls, with the caller's identity; and nginx's own access
#      log (its sidecar's stdout) still prints the calls made during the
#      session;
#   2. afterwards nothing is left: no object labelled apitrace.io/session, the
#      mesh config byte for byte as before the session, no session label on
#      nginx;
#   3. a CLI killed with SIGKILL mid-session: its probes notice the Lease
#      lapse and remove the session themselves (nothing left within 90 s,
#      the mesh config restored, nginx's label gone), and
#      `kubectl apitrace cleanup --all` then finds nothing to remove.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${CLUSTER:-apitrace-e2e}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE_ARCHIVE=target/dist/apitrace-probe_v$VERSION.oci.tar
CLI=target/x86_64-unknown-linux-gnu/release/kubectl-apitrace
for tool in docker kind kubectl istioctl; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is needed" >&2; exit 1; }
done
[ -x "$CLI" ] && [ -f "$IMAGE_ARCHIVE" ] || { echo "e2e: run cargo xtask release --platform linux/amd64 first" >&2; exit 1; }
[ "${KEEP:-0}" = 1 ] || trap 'kind delete cluster --name "$CLUSTER"' EXIT

kind create cluster --name "$CLUSTER" --wait 120s
istioctl install -y --set profile=demo --set revision=canary --set meshConfig.accessLogFile=/dev/stdout
istioctl tag set prod --revision canary
kind load image-archive --name "$CLUSTER" "$IMAGE_ARCHIVE"
"$CLI" version --client | grep -q "probe image: ghcr.io/apitrace/apitrace-probe:$VERSION@sha256:" || { echo "e2e: the CLI is not pinned to the release's image" >&2; exit 1; }
kubectl apply -f manifests/probe.yaml
kubectl apply -f manifests/user-clusterrole.yaml
kubectl label namespace default istio.io/rev=prod --overwrite

# The user: a ServiceAccount bound to apitrace-user and nothing else, in a
# kubeconfig of its own.
kubectl create serviceaccount apitrace-e2e-user -n default
kubectl create clusterrolebinding apitrace-e2e-user --clusterrole=apitrace-user --serviceaccount=default:apitrace-e2e-user
USER_KUBECONFIG=target/e2e-user.kubeconfig
kubectl config view --minify --raw > "$USER_KUBECONFIG"
TOKEN=$(kubectl create token apitrace-e2e-user -n default --duration=2h)
KUBECONFIG=$USER_KUBECONFIG kubectl config set-credentials apitrace-e2e-user --token="$TOKEN" >/dev/null
KUBECONFIG=$USER_KUBECONFIG kubectl config set-context --current --user=apitrace-e2e-user >/dev/null
user() { KUBECONFIG=$USER_KUBECONFIG "$@"; }
# The binding is what it should be: no cluster-admin.
[ "$(user kubectl auth can-i create clusterrolebindings)" = no ] || { echo "e2e: the user is too powerful" >&2; exit 1; }

kubectl create deployment nginx --image=nginx:1.27 --port=80
kubectl expose deployment nginx --port=80
kubectl create deployment sleep --image=curlimages/curl:8.10.1 -- sleep infinity
kubectl rollout status deployment/nginx deployment/sleep --timeout=180s
NGINX=$(kubectl get pod -l app=nginx -o jsonpath='{.items[0].metadata.name}')
SLEEP=$(kubectl get pod -l app=sleep -o jsonpath='{.items[0].metadata.name}')
mesh() { kubectl get configmap istio-canary -n istio-system -o jsonpath='{.data.mesh}'; }
MESH_BEFORE=$(mesh)

echo "== 1. a session joins all three layers, as apitrace-user, and the pods' own log still prints"
user "$CLI" check "pod/$NGINX" | tee target/e2e-check.txt
grep -q "revision canary" target/e2e-check.txt || { echo "e2e: the revision was not found from the pod" >&2; exit 1; }
user "$CLI" "pod/$NGINX" --duration 40s -o ndjson > target/e2e-records.ndjson &
SESSION=$!
sleep 25
SINCE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for i in $(seq 1 10); do
  kubectl exec "$SLEEP" -c sleep -- curl -s -o /dev/null -H "Authorization: Bearer e2e.$i.sig" "http://nginx/e2e-during-$i"
done
sleep 3
OWN=$(kubectl logs "$NGINX" -c istio-proxy --since-time="$SINCE" | grep -c 'e2e-during-' || true)
wait "$SESSION"
grep -q '"layers":\["als","wasm","tc"\]' target/e2e-records.ndjson || { echo "e2e: no call joined with all layers" >&2; exit 1; }
[ "$OWN" -ge 10 ] || { echo "e2e: nginx's own access log printed $OWN of the 10 calls made during the session" >&2; exit 1; }

echo "== 2. nothing is left"
left() {
  kubectl get pods,services,secrets,leases,telemetries.telemetry.istio.io,wasmplugins.extensions.istio.io \
    -A -l apitrace.io/session -o name
}
[ -z "$(left)" ] || { echo "e2e: left behind: $(left)" >&2; exit 1; }
[ "$(mesh)" = "$MESH_BEFORE" ] || { echo "e2e: the mesh config changed: $(diff <(echo "$MESH_BEFORE") <(mesh))" >&2; exit 1; }

echo "== 3. the probes remove a killed CLI's session once its Lease lapses"
user "$CLI" "pod/$NGINX" --duration 5m > /dev/null &
SESSION=$!
sleep 30
kill -9 "$SESSION"
[ -n "$(left)" ] || { echo "e2e: the session created nothing?" >&2; exit 1; }
for i in $(seq 1 90); do [ -z "$(left)" ] && break; sleep 1; done
[ -z "$(left)" ] || { echo "e2e: the probes left: $(left)" >&2; exit 1; }
[ "$(mesh)" = "$MESH_BEFORE" ] || { echo "e2e: the probes left the mesh config changed: $(diff <(echo "$MESH_BEFORE") <(mesh))" >&2; exit 1; }
user "$CLI" cleanup --all | grep -q "nothing to remove"
echo "e2e: passed"
