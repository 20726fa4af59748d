#!/usr/bin/env bash
# The real thing on kind with Istio: the paper's example, sleep -> nginx.
#
# Needs docker, kind, kubectl, istioctl and a built probe (`cargo xtask build
# --release`). It creates a kind cluster (deleted at the end unless KEEP=1),
# installs Istio (demo profile), loads the probe image, applies manifests/,
# deploys sleep and nginx with sidecars, and runs a 40 s session on nginx while
# sleep calls it. It checks:
#   1. the session prints records joined from all three layers (als, wasm, tc)
#      for sleep's calls, with the caller's identity;
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
IMAGE=ghcr.io/apitrace/apitrace-probe:e2e
CLI=target/release/kubectl-apitrace
for tool in docker kind kubectl istioctl; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is needed" >&2; exit 1; }
done
[ -x "$CLI" ] && [ -x target/release/apitrace-probe ] || { echo "e2e: run cargo xtask build --release first" >&2; exit 1; }
[ "${KEEP:-0}" = 1 ] || trap 'kind delete cluster --name "$CLUSTER"' EXIT

kind create cluster --name "$CLUSTER" --wait 120s
istioctl install -y --set profile=demo
docker build -f manifests/probe.Dockerfile -t "$IMAGE" target/release
kind load docker-image --name "$CLUSTER" "$IMAGE"
kubectl apply -f manifests/probe.yaml
kubectl label namespace default istio-injection=enabled --overwrite
kubectl create deployment nginx --image=nginx:1.27 --port=80
kubectl expose deployment nginx --port=80
kubectl create deployment sleep --image=curlimages/curl:8.10.1 -- sleep infinity
kubectl rollout status deployment/nginx deployment/sleep --timeout=180s
NGINX=$(kubectl get pod -l app=nginx -o jsonpath='{.items[0].metadata.name}')
SLEEP=$(kubectl get pod -l app=sleep -o jsonpath='{.items[0].metadata.name}')
mesh() { kubectl get configmap istio -n istio-system -o jsonpath='{.data.mesh}'; }
MESH_BEFORE=$(mesh)

echo "== 1. a session joins all three layers"
"$CLI" check "pod/$NGINX"
"$CLI" "pod/$NGINX" --duration 40s --probe-image "$IMAGE" -o ndjson > target/e2e-records.ndjson &
SESSION=$!
sleep 25
for i in $(seq 1 10); do
  kubectl exec "$SLEEP" -c sleep -- curl -s -o /dev/null -H "Authorization: Bearer e2e.$i.sig" http://nginx/
done
wait "$SESSION"
grep -q '"layers":\["als","wasm","tc"\]' target/e2e-records.ndjson || { echo "e2e: no call joined with all layers" >&2; exit 1; }

echo "== 2. nothing is left"
left() {
  kubectl get pods,services,secrets,leases,telemetries.telemetry.istio.io,wasmplugins.extensions.istio.io \
    -A -l apitrace.io/session -o name
}
[ -z "$(left)" ] || { echo "e2e: left behind: $(left)" >&2; exit 1; }
[ "$(mesh)" = "$MESH_BEFORE" ] || { echo "e2e: the mesh config changed: $(diff <(echo "$MESH_BEFORE") <(mesh))" >&2; exit 1; }

echo "== 3. the probes remove a killed CLI's session once its Lease lapses"
"$CLI" "pod/$NGINX" --duration 5m --probe-image "$IMAGE" > /dev/null &
SESSION=$!
sleep 30
kill -9 "$SESSION"
[ -n "$(left)" ] || { echo "e2e: the session created nothing?" >&2; exit 1; }
for i in $(seq 1 90); do [ -z "$(left)" ] && break; sleep 1; done
[ -z "$(left)" ] || { echo "e2e: the probes left: $(left)" >&2; exit 1; }
[ "$(mesh)" = "$MESH_BEFORE" ] || { echo "e2e: the probes left the mesh config changed: $(diff <(echo "$MESH_BEFORE") <(mesh))" >&2; exit 1; }
"$CLI" cleanup --all | grep -q "nothing to remove"
echo "e2e: passed"
