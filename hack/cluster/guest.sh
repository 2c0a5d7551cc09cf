#!/bin/sh
# hack/cluster/guest.sh: the Kubernetes node inside the VM of hack/cluster.sh (run by the guest
# /init through hack/vm/run.sh as `sh /share/guest.sh`; POSIX sh, the guest has no bash).
#
# Brings up, in order, writing each step to /share/state/progress: cgroup v2, modules and
# sysctls, eth0 (QEMU user networking: the API server is at $APISERVER_IP through a guestfwd),
# volume groups $VG on /dev/vda and $THIN_VG on $THIN_DEVICE, containerd (+ image import),
# kubelet, kube-proxy; then serves the exec channel (/share/exec/ID.cmd -> ID.out + ID.rc) until /share/stop appears. A step that
# fails writes its reason to /share/state/failed and the script exits (the VM powers off).
# Logs: /share/logs/{containerd,kubelet,kube-proxy}.log.
set -u
S=/share
. "$S/conf/env" # NODE_NAME APISERVER_IP APISERVER_PORT VG VG_DEVICE THIN_VG THIN_DEVICE POD_CIDR ...
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

up() { cut -d' ' -f1 /proc/uptime; }
step() {
	echo "$(up) $*" >>"$S/state/progress"
	echo "cluster-guest [$(up)s]: $*"
}
fail() {
	step "FAILED: $*"
	echo "$*" >"$S/state/failed"
	stop_all
	exit 1
}
stop_all() {
	for p in kube-proxy kubelet containerd; do
		pid=$(cat "/run/$p.pid" 2>/dev/null) && kill "$pid" 2>/dev/null
	done
	sleep 2
}
# wait_for SECONDS WHAT CMD...: poll CMD every second until it succeeds.
wait_for() {
	n=$1 what=$2
	shift 2
	i=0
	until "$@" >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -lt "$n" ] || return 1
		sleep 1
	done
	step "$what after ${i}s"
}
start() { # start NAME ARGS...: run in the background, log to /share/logs/NAME.log
	name=$1
	shift
	"$@" </dev/null >>"$S/logs/$name.log" 2>&1 &
	echo $! >"/run/$name.pid"
}
alive() { kill -0 "$(cat "/run/$1.pid" 2>/dev/null)" 2>/dev/null; }

# The node's root must be a mount with a parent for runc's pivot_root(2): on the initramfs
# (rootfs) it fails with EINVAL, and runc's fallback (no_pivot: MS_MOVE + chroot) is unsafe: a
# container with a Bidirectional mount (carve-node's /var/lib/kubelet) gets rshared root
# propagation, and its MS_MOVE onto / covered the node's own root (seen: every carve container
# failed with "open /proc/thread-self/mountinfo: no such file"). hack/cluster.sh boots with
# carve.tmpfsroot, so that /init switch_roots into a tmpfs first (hack/vm/init).
[ -e /.carve-tmpfsroot ] || fail "the node's root is the initramfs: boot with carve.tmpfsroot on the kernel command line (hack/cluster.sh sets CARVE_VM_APPEND)"
step "node setup starting (kernel $(uname -r))"
echo "$NODE_NAME" >/proc/sys/kernel/hostname
# No localhost line otherwise (RIGS.md 5); the node name resolves to its own address.
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n10.0.2.15 %s\n' "$NODE_NAME" >/etc/hosts
# Pods get the node's resolv.conf; there is no DNS server to name (in-cluster clients use the
# kubernetes Service's IP from their environment).
: >/etc/resolv.conf

# cgroup v2 only (kubelet 1.35+ refuses v1), controllers delegated to the children.
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2 at /sys/fs/cgroup"
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
	echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
done
step "cgroup2 mounted, controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"

missing=""
for m in virtio_net veth bridge br_netfilter overlay nf_conntrack; do
	modprobe "$m" || missing="$missing $m"
done
[ -z "$missing" ] || fail "kernel modules missing:$missing (hack/vm/build.sh MODULE_DIRS)"
echo 1 >/proc/sys/net/ipv4/ip_forward
echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
echo 1 >/proc/sys/net/bridge/bridge-nf-call-ip6tables

ip link set lo up
wait_for 20 "eth0 appeared" ip link show eth0 || fail "no eth0: the VM has no NIC (run.sh --guestfwd)"
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 ||
	fail "cannot configure eth0"
step "eth0 10.0.2.15/24, API server at $APISERVER_IP:$APISERVER_PORT"

for d in /var/lib/containerd /var/lib/kubelet /var/log/pods /var/log/containers; do
	mkdir -p "$d"
done
# Own tmpfs mounts: overlayfs wants an upper layer with xattrs, and the kubelet measures its
# root dir's filesystem for ephemeral storage (the initramfs root is shared with everything).
mount -t tmpfs -o size=2560m,mode=0711 containerd /var/lib/containerd &&
	mount -t tmpfs -o size=1024m,mode=0750 kubelet /var/lib/kubelet ||
	fail "cannot mount tmpfs on /var/lib/containerd and /var/lib/kubelet"
# Shared mount propagation (the CSI node plugin mounts /var/lib/kubelet Bidirectional); the
# node's tmpfs root has none by default. Only after the chroot: a shared rootfs (the parent of
# the node's root) makes pivot_root(2) fail.
mount --make-rshared / || fail "mount --make-rshared / failed"
mkdir -p /etc/containerd /etc/cni/net.d /opt/cni/bin /run/containerd /etc/kubernetes

pvcreate -y -ff "$VG_DEVICE" >/dev/null 2>&1 && vgcreate "$VG" "$VG_DEVICE" >/dev/null 2>&1 ||
	fail "cannot create volume group $VG on $VG_DEVICE: $(vgcreate "$VG" "$VG_DEVICE" 2>&1 | tail -n1)"
step "volume group $VG on $VG_DEVICE: $(vgs --noheadings -o vg_size --units g "$VG" | tr -d ' ')"
# The lvm-thin pool's own volume group (a thin pool's VG may hold no other carve pool); carve-node
# creates the thin pool in it at start-up (test/cluster/overlay: size=90%, zeroing on).
if [ -n "${THIN_VG:-}" ]; then
	pvcreate -y -ff "$THIN_DEVICE" >/dev/null 2>&1 && vgcreate "$THIN_VG" "$THIN_DEVICE" >/dev/null 2>&1 ||
		fail "cannot create volume group $THIN_VG on $THIN_DEVICE (hack/cluster.sh boots with --disks 1): $(vgcreate "$THIN_VG" "$THIN_DEVICE" 2>&1 | tail -n1)"
	step "volume group $THIN_VG on $THIN_DEVICE: $(vgs --noheadings -o vg_size --units g "$THIN_VG" | tr -d ' ')"
fi

# Copied into the guest's RAM root, not linked: the 9p share has no page cache (cache=none), so
# every start of a program from it (ctr once per image, a shim per pod) reads it over 9p again.
for b in containerd ctr containerd-shim-runc-v2 kubelet kube-proxy; do
	cp "$S/bin/$b" "/usr/local/bin/$b" || fail "cannot copy $b into the guest"
done
step "programs copied into the guest"
ln -sf /usr/lib/cni/* /opt/cni/bin/

# containerd 2.4 (config version 4); runc with pivot_root(2), as on any node (see the top).
cat >/etc/containerd/config.toml <<CONF
version = 4
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins.'io.containerd.cri.v1.runtime']
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
CONF
# The pod network: one bridge, host-local addresses, masquerade to everything outside it.
cat >/etc/cni/net.d/10-carve.conflist <<CONF
{
  "cniVersion": "1.0.0",
  "name": "carve-pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CONF

start containerd containerd --config /etc/containerd/config.toml --log-level info
wait_for 180 "containerd serving" ctr version || fail "containerd did not serve its socket within 180 s"
echo ok >"$S/state/containerd"

# All archives at once: the guest has two CPUs, and one import is mostly one CPU decompressing
# and hashing. Each import's output and exit code go to /run/import.NAME.
for f in "$S"/images/*.tar; do
	[ -e "$f" ] || continue
	n=$(basename "$f" .tar)
	(ctr -n k8s.io images import "$f" >"/run/import.$n.out" 2>&1; echo $? >"/run/import.$n.rc"
		step "imported $n.tar") &
	pids="${pids:-} $!"
done
# Only the imports: a bare `wait` would wait for containerd too.
for p in ${pids:-}; do wait "$p"; done
for f in "$S"/images/*.tar; do
	[ -e "$f" ] || continue
	n=$(basename "$f" .tar)
	[ "$(cat "/run/import.$n.rc" 2>/dev/null)" = 0 ] ||
		fail "ctr images import $n.tar failed: $(tail -n1 "/run/import.$n.out" 2>/dev/null)"
done
ctr -n k8s.io images ls -q >"$S/state/images"
echo ok >"$S/state/images-imported"

cat >/etc/kubernetes/kubelet.yaml <<CONF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The API server calls the kubelet (logs, exec) through QEMU's hostfwd to this port, with the
# admin client cert; no webhook authn/authz (the kubelet would call back for every request).
port: $KUBELET_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: /share/conf/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
failSwapOn: false
readOnlyPort: 0
# Images are imported, never pulled: never garbage-collect them, never evict on a tmpfs root.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%"}
# Everything is slow under emulation.
runtimeRequestTimeout: 10m
CONF
start kubelet kubelet --config=/etc/kubernetes/kubelet.yaml --kubeconfig="$S/conf/kubelet.kubeconfig" \
	--hostname-override="$NODE_NAME" --node-ip=10.0.2.15 --v=2
step "kubelet started"
start_proxy() {
	start kube-proxy kube-proxy --kubeconfig="$S/conf/kube-proxy.kubeconfig" --hostname-override="$NODE_NAME" \
		--proxy-mode=iptables --cluster-cidr="$POD_CIDR" --conntrack-max-per-core=0 \
		--metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 --v=2
}
start_proxy
step "kube-proxy started"
echo ok >"$S/state/started"

# The exec channel and the watch on the node's processes, until the host writes /share/stop.
mkdir -p "$S/exec"
proxy_restarts=0
while [ ! -e "$S/stop" ]; do
	for f in "$S"/exec/*.cmd; do
		[ -e "$f" ] || continue
		b=${f%.cmd}
		mv "$f" "$b.run" || continue
		(sh "$b.run" </dev/null >"$b.out" 2>&1; echo $? >"$b.rc.tmp"; mv "$b.rc.tmp" "$b.rc") &
	done
	# kube-proxy exits on purpose when the Node's addresses change ("NodeIPs changed"): it starts
	# before kubelet registered the Node, so it always does so once. Restart it, as systemd or its
	# DaemonSet would; a kube-proxy that keeps exiting is a failure.
	if ! alive kube-proxy && [ "$proxy_restarts" -lt 5 ]; then
		proxy_restarts=$((proxy_restarts + 1))
		step "kube-proxy exited ($(tail -n 1 "$S/logs/kube-proxy.log" | cut -c1-200)); restart $proxy_restarts"
		start_proxy
	fi
	for p in containerd kubelet kube-proxy; do
		if ! alive "$p" && [ ! -e "$S/state/died-$p" ]; then
			step "$p exited"
			echo "$p exited; last lines of its log: $(tail -n 3 "$S/logs/$p.log" | tr '\n' ' ')" >"$S/state/died-$p"
		fi
	done
	sleep 1
done
step "stop requested"
stop_all
exit 0
