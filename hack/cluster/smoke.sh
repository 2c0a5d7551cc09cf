#!/usr/bin/env bash
# hack/cluster/smoke.sh: the node's own smoke test, run as hack/cluster.sh's command
# (CARVE_CLUSTER_NO_CARVE=1 hack/cluster.sh -- hack/cluster/smoke.sh): a busybox pod on the node
# reaches the API server through the `kubernetes` Service (kube-proxy's DNAT, the CNI bridge's
# masquerade, QEMU's guestfwd) and its log comes back through `kubectl logs` (API server ->
# kubelet through QEMU's hostfwd). Prints one line per check; exit 1 if one fails.
set -uo pipefail
ns=default pod=carve-smoke
fail() { echo "smoke: FAIL: $*"; kubectl -n $ns describe pod $pod | tail -n 20; exit 1; }
kubectl -n $ns delete pod $pod --ignore-not-found --grace-period=0 >/dev/null 2>&1
# Plain HTTP to the HTTPS port: the API server answers "400 Bad Request" over TLS's socket, which
# proves the TCP path without TLS tools in busybox.
kubectl apply -f - <<POD || fail "kubectl apply"
apiVersion: v1
kind: Pod
metadata: {name: $pod, namespace: $ns}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: ${CARVE_WORKLOAD_IMAGE:-carve.local/busybox:1.35.0}
    imagePullPolicy: Never
    # nc, not wget: Debian's busybox-static wget segfaults here (measured: exit 139).
    command: [sh, -c, 'echo "service \$KUBERNETES_SERVICE_HOST:\$KUBERNETES_SERVICE_PORT"; printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 20 "\$KUBERNETES_SERVICE_HOST" "\$KUBERNETES_SERVICE_PORT" 2>&1; echo nc-exit=\$?']
POD
t=$SECONDS
until [[ "$(kubectl -n $ns get pod $pod -o jsonpath='{.status.phase}')" =~ ^(Succeeded|Failed)$ ]]; do
	((SECONDS - t < 300)) || fail "pod $pod not finished after 300 s"
	sleep 2
done
echo "smoke: pod $pod ran ($(kubectl -n $ns get pod $pod -o jsonpath='{.status.phase}') after $((SECONDS - t)) s)"
out="$(kubectl -n $ns logs $pod)" || fail "kubectl logs (API server -> kubelet) failed"
echo "$out" | sed 's/^/smoke:   /'
grep -q '400 Bad Request' <<<"$out" || fail "the pod did not reach the API server through the kubernetes Service"
echo "smoke: the pod reached the API server through the kubernetes Service"
kubectl -n $ns delete pod $pod --grace-period=0 >/dev/null 2>&1
echo "smoke: PASS"
