#!/usr/bin/env bash
# hack/k8s/cluster.sh: a real Kubernetes control plane on 127.0.0.1, no kubelet.
#
#   cluster.sh up DIR                       start etcd, kube-apiserver, kube-controller-manager and
#                                           kube-scheduler; state, certs, logs and data in DIR
#   cluster.sh down DIR                     stop them (reverse order, waiting for each); keeps DIR
#   cluster.sh status DIR                   one line per component: running/stopped; rc 0 if all run
#   cluster.sh sa-kubeconfig DIR NS NAME [OUT] [DURATION]
#                                           create ServiceAccount NS/NAME if missing, mint a token
#                                           (kubectl create token, default 24h) and write a
#                                           kubeconfig for it to OUT (default DIR/sa-NS-NAME.kubeconfig);
#                                           prints OUT
#   cluster.sh add-node DIR NAME [DRIVER]   create a fake Ready Node NAME (label DRIVER/node=NAME)
#                                           and its CSINode with DRIVER (default carve.csi.dev)
#
# DIR must be an absolute or relative path without whitespace; 'up' creates it if missing.
# See hack/k8s/README.md for the contract (files in DIR, the env file's keys).
#
# Environment:
#   CARVE_K8S_BIN        folder with the binaries (default <repo>/.cache/k8s/bin, made by build.sh)
#   CARVE_K8S_TIMEOUT    seconds to wait for readiness (default 60)
#   CARVE_K8S_DISABLE_ADMISSION  admission plugins to disable
#                        (default TaintNodesByCondition,ServiceAccount)
#   CARVE_K8S_APISERVER_ARGS, CARVE_K8S_KCM_ARGS, CARVE_K8S_SCHEDULER_ARGS
#                        extra arguments (word-split) appended to those components' command lines
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${CARVE_K8S_BIN:-$ROOT/.cache/k8s/bin}"
TIMEOUT="${CARVE_K8S_TIMEOUT:-60}"
DISABLE_ADMISSION="${CARVE_K8S_DISABLE_ADMISSION:-TaintNodesByCondition,ServiceAccount}"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler)

log() { printf '[k8s-cluster %s] %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2; }
die() {
	log "FAILED: $*"
	exit 1
}
usage() {
	sed -n '2,27p' "$0" >&2
	exit 2
}

# now_ms: milliseconds since the epoch.
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------------------------
# Ports: pick ports that no socket on this machine uses, below the ephemeral range so outgoing
# connections cannot take them meanwhile. A collision with a port taken between the check and the
# bind shows as "address already in use"; 'up' then retries with new ports.
declare -A TAKEN=()
load_taken_ports() {
	local port
	TAKEN=()
	# awk, not a bash read loop: bash reads /proc files a byte per syscall (about 1 s here).
	for port in $(awk 'FNR > 1 { split($2, a, ":"); print a[2] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null); do
		[[ $port =~ ^[0-9A-Fa-f]{4}$ ]] && TAKEN[$((16#$port))]=1
	done
	return 0
}
# free_port VAR: set VAR to a port not in TAKEN, and mark it taken (no subshell: TAKEN must stick).
free_port() {
	local p i
	for ((i = 0; i < 1000; i++)); do
		p=$((20000 + RANDOM % 12000))
		if [[ -z "${TAKEN[$p]:-}" ]]; then
			TAKEN[$p]=1
			printf -v "$1" '%s' "$p"
			return 0
		fi
	done
	die "no free port found"
}

# ---------------------------------------------------------------------------------------------
# Certificates and the service-account key pair: EC P-256 (RSA key generation takes seconds on a
# loaded machine; service-account tokens are then signed with ES256), one openssl call per cert
# (OpenSSL >= 3.0: req -x509 -CA).
EC=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

# sign NAME SUBJECT EXT...: key + cert $PKI/NAME.{key,crt} signed by the CA, with the extensions
# EXT (each passed to -addext).
sign() {
	local name="$1" subj="$2" ext args=()
	shift 2
	for ext in "$@"; do args+=(-addext "$ext"); done
	openssl req -x509 -new -config "$PKI/req.cnf" "${EC[@]}" -keyout "$PKI/$name.key" -subj "$subj" \
		-CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -days 3650 -sha256 "${args[@]}" \
		-out "$PKI/$name.crt" 2>"$PKI/openssl.err" || die "openssl: $(cat "$PKI/openssl.err")"
}

make_pki() {
	mkdir -p "$PKI"
	printf '[req]\ndistinguished_name=dn\n[dn]\n' >"$PKI/req.cnf"
	openssl req -x509 -new -config "$PKI/req.cnf" "${EC[@]}" -keyout "$PKI/ca.key" -subj "/CN=carve-test-ca" \
		-days 3650 -sha256 -addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" -out "$PKI/ca.crt" 2>"$PKI/openssl.err" ||
		die "openssl: $(cat "$PKI/openssl.err")"
	local leaf=("basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment")
	sign apiserver "/CN=kube-apiserver" "${leaf[@]}" extendedKeyUsage=serverAuth \
		subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
	sign admin "/O=system:masters/CN=carve-admin" "${leaf[@]}" extendedKeyUsage=clientAuth
	# The controller-manager is also in system:masters: every controller then runs with its own
	# credentials (--use-service-account-credentials=false), which saves about 5 s per 'up' (one
	# ServiceAccount and token per controller). CARVE_K8S_KCM_ARGS=--use-service-account-credentials=true
	# restores per-controller identities.
	sign kube-controller-manager "/O=system:masters/CN=system:kube-controller-manager" "${leaf[@]}" extendedKeyUsage=clientAuth
	sign kube-scheduler "/CN=system:kube-scheduler" "${leaf[@]}" extendedKeyUsage=clientAuth
	# The aggregator's front-proxy client: with the request-header flags set, the controller-manager
	# and scheduler find a request-header CA and do not log an error about it every second.
	sign front-proxy-client "/CN=front-proxy-client" "${leaf[@]}" extendedKeyUsage=clientAuth
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/sa.key" 2>"$PKI/openssl.err" ||
		die "openssl: $(cat "$PKI/openssl.err")"
	openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>"$PKI/openssl.err" ||
		die "openssl: $(cat "$PKI/openssl.err")"
	rm -f "$PKI/openssl.err" "$PKI/req.cnf"
	chmod 600 "$PKI"/*.key
}

b64() { base64 -w0 <"$1"; }

# write_kubeconfig OUT USER (client cert $PKI/USER.{crt,key}) or OUT USER TOKEN.
write_kubeconfig() {
	local out="$1" user="$2" token="${3:-}" creds
	if [[ -n $token ]]; then
		creds="    token: $token"
	else
		creds="    client-certificate-data: $(b64 "$PKI/$user.crt")
    client-key-data: $(b64 "$PKI/$user.key")"
	fi
	cat >"$out.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: carve
  cluster:
    server: $APISERVER
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $user
  user:
$creds
contexts:
- name: carve
  context:
    cluster: carve
    user: $user
current-context: carve
EOF
	chmod 600 "$out.tmp"
	mv "$out.tmp" "$out"
}

# ---------------------------------------------------------------------------------------------
# Processes. Each runs in its own session (setsid), with stdin from /dev/null and stdout/stderr to
# DIR/NAME.log, so that a caller waiting on this script's output (Go's exec.Cmd) is not held open.
# Its pid goes to DIR/pids/NAME.pid at once, so 'down' can stop a half-started cluster.

start() {
	local name="$1"
	shift
	echo "# $(date -Is) $*" >"$DIR/$name.log"
	setsid "$@" </dev/null >>"$DIR/$name.log" 2>&1 &
	echo $! >"$DIR/pids/$name.pid"
}

pid_of() { [[ -f "$DIR/pids/$1.pid" ]] && cat "$DIR/pids/$1.pid" || true; }

# running NAME: the recorded pid is alive (not a zombie) and still runs NAME's binary.
running() {
	local pid state exe
	pid="$(pid_of "$1")"
	[[ -n $pid && -d /proc/$pid ]] || return 1
	state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" || return 1
	[[ $state != Z && $state != X ]] || return 1
	exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
	[[ $(basename "${exe% (deleted)}") == "$1" ]]
}

# stop NAME: SIGTERM, wait up to 15 s, then SIGKILL and wait up to 5 s.
stop() {
	local name="$1" pid i
	running "$name" || return 0
	pid="$(pid_of "$name")"
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 150; i++)); do
		running "$name" || { log "stopped $name (pid $pid)"; return 0; }
		sleep 0.1
	done
	log "$name (pid $pid) ignored SIGTERM for 15 s; killing"
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		running "$name" || return 0
		sleep 0.1
	done
	log "$name (pid $pid) is still running after SIGKILL"
	return 1
}

tails() {
	local name
	for name in "${COMPONENTS[@]}"; do
		[[ -f "$DIR/$name.log" ]] || continue
		echo "----- $DIR/$name.log (last 25 lines) -----" >&2
		tail -n 25 "$DIR/$name.log" >&2
	done
}

# wait_https NAME URL: until URL answers "ok" (CA-verified for the apiserver, else -k: the
# controller-manager and scheduler serve self-signed certs); fails if NAME exits.
wait_https() {
	local name="$1" url="$2" deadline=$(($(now_ms) + TIMEOUT * 1000)) out
	local curl_args=(-s --max-time 2)
	if [[ $name == kube-apiserver ]]; then
		curl_args+=(--cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key")
	else
		curl_args+=(-k)
	fi
	while (($(now_ms) < deadline)); do
		running "$name" || { log "$name exited"; return 1; }
		out="$(curl "${curl_args[@]}" "$url" 2>/dev/null || true)"
		[[ $out == ok ]] && return 0
		sleep 0.1
	done
	log "$name not ready after $TIMEOUT s: $url answered: ${out:-nothing}"
	return 1
}

kubectl_() { "$BIN/kubectl" --kubeconfig "$DIR/admin.kubeconfig" "$@"; }

cmd_down() {
	local i rc=0
	[[ -d "$DIR/pids" ]] || { log "nothing to stop in $DIR"; return 0; }
	for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
		stop "${COMPONENTS[$i]}" || rc=1
	done
	return $rc
}

cmd_status() {
	local name rc=0
	for name in "${COMPONENTS[@]}"; do
		if running "$name"; then
			echo "$name running pid $(pid_of "$name")"
		else
			echo "$name stopped"
			rc=1
		fi
	done
	return $rc
}

# try_up: one attempt with fresh ports. Returns 0 when ready, 1 on failure, 2 on a port clash.
try_up() {
	load_taken_ports
	free_port ETCD_PORT
	free_port ETCD_PEER_PORT
	free_port APISERVER_PORT
	free_port KCM_PORT
	free_port SCHEDULER_PORT
	ETCD_URL="http://127.0.0.1:$ETCD_PORT"
	APISERVER="https://127.0.0.1:$APISERVER_PORT"

	write_kubeconfig "$DIR/admin.kubeconfig" admin
	write_kubeconfig "$DIR/kube-controller-manager.kubeconfig" kube-controller-manager
	write_kubeconfig "$DIR/kube-scheduler.kubeconfig" kube-scheduler

	local t0
	t0=$(now_ms)
	start etcd "$BIN/etcd" --name=carve --data-dir="$DIR/etcd" \
		--listen-client-urls="$ETCD_URL" --advertise-client-urls="$ETCD_URL" \
		--listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster="carve=http://127.0.0.1:$ETCD_PEER_PORT" \
		--unsafe-no-fsync --log-level=warn

	# shellcheck disable=SC2086
	start kube-apiserver "$BIN/kube-apiserver" \
		--etcd-servers="$ETCD_URL" \
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
		--endpoint-reconciler-type=none \
		--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
		--client-ca-file="$PKI/ca.crt" \
		--requestheader-client-ca-file="$PKI/ca.crt" --requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$PKI/sa.pub" \
		--service-account-signing-key-file="$PKI/sa.key" \
		--service-cluster-ip-range=10.0.0.0/24 \
		--authorization-mode=Node,RBAC \
		--disable-admission-plugins="$DISABLE_ADMISSION" \
		--allow-privileged=true --profiling=false \
		--cert-dir="$DIR/kube-apiserver" \
		${CARVE_K8S_APISERVER_ARGS:-}

	if ! wait_https kube-apiserver "$APISERVER/readyz"; then
		grep -q 'address already in use' "$DIR"/etcd.log "$DIR"/kube-apiserver.log 2>/dev/null && return 2
		return 1
	fi
	log "kube-apiserver ready at $APISERVER after $(($(now_ms) - t0)) ms"

	# shellcheck disable=SC2086
	start kube-controller-manager "$BIN/kube-controller-manager" \
		--kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
		--authentication-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
		--authorization-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$DIR/kube-controller-manager" \
		--leader-elect=false \
		--controllers='*,-node-lifecycle-controller' \
		--use-service-account-credentials=false \
		--service-account-private-key-file="$PKI/sa.key" \
		--root-ca-file="$PKI/ca.crt" \
		--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
		${CARVE_K8S_KCM_ARGS:-}

	# shellcheck disable=SC2086
	start kube-scheduler "$BIN/kube-scheduler" \
		--kubeconfig="$DIR/kube-scheduler.kubeconfig" \
		--authentication-kubeconfig="$DIR/kube-scheduler.kubeconfig" \
		--authorization-kubeconfig="$DIR/kube-scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --cert-dir="$DIR/kube-scheduler" \
		--leader-elect=false \
		${CARVE_K8S_SCHEDULER_ARGS:-}

	if ! wait_https kube-controller-manager "https://127.0.0.1:$KCM_PORT/healthz" ||
		! wait_https kube-scheduler "https://127.0.0.1:$SCHEDULER_PORT/healthz"; then
		grep -q 'address already in use' "$DIR"/kube-controller-manager.log "$DIR"/kube-scheduler.log 2>/dev/null && return 2
		return 1
	fi

	# The controller-manager's service-account controllers are working once namespace default
	# has its ServiceAccount: from then on 'sa-kubeconfig' and pods referring to it work.
	local deadline=$(($(now_ms) + TIMEOUT * 1000))
	until kubectl_ -n default get serviceaccount default >/dev/null 2>&1; do
		(($(now_ms) < deadline)) || { log "ServiceAccount default/default never appeared"; return 1; }
		running kube-controller-manager || { log "kube-controller-manager exited"; return 1; }
		sleep 0.2
	done
	log "control plane ready after $(($(now_ms) - t0)) ms"
	return 0
}

write_env() {
	cat >"$DIR/env.tmp" <<EOF
KUBECONFIG=$DIR/admin.kubeconfig
CARVE_K8S_DIR=$DIR
CARVE_K8S_BIN=$BIN
CARVE_K8S_KUBECTL=$BIN/kubectl
CARVE_K8S_APISERVER=$APISERVER
CARVE_K8S_APISERVER_PORT=$APISERVER_PORT
CARVE_K8S_CA=$PKI/ca.crt
CARVE_K8S_ETCD_URL=$ETCD_URL
CARVE_K8S_ETCD_PORT=$ETCD_PORT
CARVE_K8S_ETCD_PEER_PORT=$ETCD_PEER_PORT
CARVE_K8S_KCM_PORT=$KCM_PORT
CARVE_K8S_SCHEDULER_PORT=$SCHEDULER_PORT
CARVE_K8S_ETCD_PID=$(pid_of etcd)
CARVE_K8S_APISERVER_PID=$(pid_of kube-apiserver)
CARVE_K8S_KCM_PID=$(pid_of kube-controller-manager)
CARVE_K8S_SCHEDULER_PID=$(pid_of kube-scheduler)
EOF
	mv "$DIR/env.tmp" "$DIR/env"
}

cmd_up() {
	local b rc
	for b in "${COMPONENTS[@]}" kubectl; do
		[[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: run hack/k8s/build.sh first (or set CARVE_K8S_BIN)"
	done
	if [[ -z ${CARVE_K8S_BIN:-} ]] && ! "$HERE/build.sh" --check >/dev/null 2>&1; then
		log "WARNING: $BIN does not match hack/k8s/tools (run hack/k8s/build.sh); using it anyway"
	fi
	command -v openssl >/dev/null || die "openssl is not installed"
	command -v curl >/dev/null || die "curl is not installed"
	for b in "${COMPONENTS[@]}"; do
		running "$b" && die "$b from an earlier 'up' is still running in $DIR (pid $(pid_of "$b")): run 'down' first"
	done
	mkdir -p "$DIR/pids"
	rm -f "$DIR/env" "$DIR"/pids/*.pid
	PKI="$DIR/pki"
	local t0
	t0=$(now_ms)
	make_pki
	log "certificates made in $(($(now_ms) - t0)) ms"
	local attempt=0
	for attempt in 1 2 3; do
		rm -rf "$DIR/etcd"
		rc=0
		try_up || rc=$?
		if ((rc == 0)); then
			write_env
			log "up in $(($(now_ms) - t0)) ms; source $DIR/env (KUBECONFIG=$DIR/admin.kubeconfig)"
			return 0
		fi
		tails
		cmd_down || true
		# A port clash is retried; so is one unexplained first failure (seen
		# once: kube-apiserver exited at once without logging why).
		((rc == 2 || attempt == 1)) || break
		log "attempt $attempt failed (rc $rc); retrying with new ports"
	done
	die "control plane did not come up; logs in $DIR"
}

cmd_sa_kubeconfig() {
	local ns="$1" name="$2" out="${3:-$DIR/sa-$1-$2.kubeconfig}" duration="${4:-24h}" token
	[[ -f "$DIR/env" ]] || die "$DIR/env is missing: is the cluster up?"
	PKI="$DIR/pki"
	APISERVER="$(sed -n 's/^CARVE_K8S_APISERVER=//p' "$DIR/env")"
	kubectl_ get namespace "$ns" >/dev/null 2>&1 || kubectl_ create namespace "$ns" >/dev/null
	kubectl_ -n "$ns" get serviceaccount "$name" >/dev/null 2>&1 ||
		kubectl_ -n "$ns" create serviceaccount "$name" >/dev/null
	token="$(kubectl_ -n "$ns" create token "$name" --duration="$duration")" ||
		die "could not mint a token for $ns/$name"
	write_kubeconfig "$out" "system:serviceaccount:$ns:$name" "$token"
	echo "$out"
}

cmd_add_node() {
	local name="$1" driver="${2:-carve.csi.dev}"
	[[ -f "$DIR/env" ]] || die "$DIR/env is missing: is the cluster up?"
	kubectl_ apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $name
  labels:
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    $driver/node: $name
status:
  capacity: {cpu: "8", memory: 32Gi, pods: "110", ephemeral-storage: 100Gi}
  allocatable: {cpu: "8", memory: 32Gi, pods: "110", ephemeral-storage: 100Gi}
  conditions:
  - type: Ready
    status: "True"
    reason: KubeletReady
    message: fake node made by hack/k8s/cluster.sh
    lastHeartbeatTime: "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    lastTransitionTime: "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: v1.37.2
---
apiVersion: storage.k8s.io/v1
kind: CSINode
metadata:
  name: $name
spec:
  drivers:
  - name: $driver
    nodeID: $name
    topologyKeys: [$driver/node]
EOF
	log "node $name and CSINode (driver $driver) created"
}

[[ $# -ge 2 ]] || usage
CMD="$1"
DIR="$2"
[[ $DIR =~ [[:space:]] ]] && die "DIR must not contain whitespace: '$DIR'"
if [[ $CMD == up ]]; then
	mkdir -p "$DIR"
elif [[ ! -d $DIR ]]; then
	[[ $CMD == down ]] && { log "nothing to stop: $DIR does not exist"; exit 0; }
	die "$DIR does not exist"
fi
DIR="$(cd "$DIR" && pwd)"
case "$CMD" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
sa-kubeconfig)
	[[ $# -ge 4 ]] || usage
	cmd_sa_kubeconfig "$3" "$4" "${5:-}" "${6:-}"
	;;
add-node)
	[[ $# -ge 3 ]] || usage
	cmd_add_node "$3" "${4:-}"
	;;
*) usage ;;
esac
