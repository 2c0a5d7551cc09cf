// Package cluster holds carve's real-node scenarios (the _test.go files: real
// pods on a kubelet in the VM rig, hack/cluster.sh) and the helpers they share
// with the real-node demo (hack/demo/realnode). Everything here talks to the
// cluster through client-go, and to the node only through CARVE_GUEST_EXEC, for
// audits (lvs, findmnt). Every wait is bounded; a wait for a pod that times out
// returns the pod's status and events in its error.
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	carvev1 "github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend/lvm"
)

// Driver is carve's CSI driver name (CSIDriver, provisioner, LV owner tag).
const Driver = "carve.csi.dev"

// TopologyKey is the node label carve's CSIStorageCapacity objects select on.
const TopologyKey = "carve.csi.dev/node"

// MiB is 2^20 bytes.
const MiB = int64(1) << 20

// Env is what hack/cluster.sh hands the command it runs (INTERFACES.md).
type Env struct {
	Kubeconfig   string // KUBECONFIG
	GuestExec    string // CARVE_GUEST_EXEC: runs `sh -c ARG` in the guest as root
	Node         string // CARVE_NODE_NAME
	VG           string // CARVE_VG: the default pool's volume group
	StorageClass string // CARVE_STORAGECLASS
	Image        string // CARVE_WORKLOAD_IMAGE (busybox)
	Namespace    string // CARVE_NAMESPACE: carve's own namespace
	Logs         string // CARVE_RIG_LOGS (optional)

	// The lvm-thin pool of the snapshot scenario (optional here; hack/cluster.sh sets them).
	ThinVG           string // CARVE_THIN_VG: the thin pool's volume group
	ThinStorageClass string // CARVE_THIN_STORAGECLASS: the class of that pool (carve-thin)
	SnapshotClass    string // CARVE_SNAPSHOTCLASS: the VolumeSnapshotClass (carve-thin)
}

// EnvFromOS reads Env; the error names every missing variable.
func EnvFromOS() (Env, error) {
	e := Env{
		Kubeconfig:   os.Getenv("KUBECONFIG"),
		GuestExec:    os.Getenv("CARVE_GUEST_EXEC"),
		Node:         os.Getenv("CARVE_NODE_NAME"),
		VG:           os.Getenv("CARVE_VG"),
		StorageClass: os.Getenv("CARVE_STORAGECLASS"),
		Image:        os.Getenv("CARVE_WORKLOAD_IMAGE"),
		Namespace:    os.Getenv("CARVE_NAMESPACE"),
		Logs:         os.Getenv("CARVE_RIG_LOGS"),

		ThinVG:           os.Getenv("CARVE_THIN_VG"),
		ThinStorageClass: os.Getenv("CARVE_THIN_STORAGECLASS"),
		SnapshotClass:    os.Getenv("CARVE_SNAPSHOTCLASS"),
	}
	var missing []string
	for _, v := range []struct{ name, val string }{
		{"KUBECONFIG", e.Kubeconfig}, {"CARVE_GUEST_EXEC", e.GuestExec}, {"CARVE_NODE_NAME", e.Node},
		{"CARVE_VG", e.VG}, {"CARVE_STORAGECLASS", e.StorageClass}, {"CARVE_WORKLOAD_IMAGE", e.Image},
		{"CARVE_NAMESPACE", e.Namespace},
	} {
		if v.val == "" {
			missing = append(missing, v.name)
		}
	}
	if len(missing) > 0 {
		return e, fmt.Errorf("not set: %s (hack/cluster.sh sets them)", strings.Join(missing, ", "))
	}
	return e, nil
}

// Cluster is a connection to the rig's cluster.
type Cluster struct {
	Env
	CS kubernetes.Interface
	C  client.Client // for carve's LocalVolume and NodeStorage
}

// Connect builds the clients from env.Kubeconfig.
func Connect(env Env) (*Cluster, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", env.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	cfg.Timeout = 30 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("clientset: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := carvev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("controller-runtime client: %w", err)
	}
	return &Cluster{Env: env, CS: cs, C: c}, nil
}

// Guest runs a shell command in the guest (as root) and returns its combined
// output; a non-zero exit is an error carrying the output. At most 4 min
// (the rig's exec channel polls a shared folder; a slow guest answers late).
func (c *Cluster) Guest(ctx context.Context, cmd string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	var out bytes.Buffer
	x := exec.CommandContext(ctx, c.GuestExec, cmd)
	x.Stdout, x.Stderr = &out, &out
	x.WaitDelay = 5 * time.Second
	if err := x.Run(); err != nil {
		return out.String(), fmt.Errorf("guest %q: %w: %s", cmd, err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// LV is one carve LV in the guest's volume group.
type LV struct {
	Name      string
	SizeBytes int64
	Tags      lvm.TagInfo
}

// LVs lists the LVs in c.VG that carry carve's owner tag.
func (c *Cluster) LVs(ctx context.Context) ([]LV, error) { return c.LVsIn(ctx, c.VG) }

// LVsIn lists the LVs in volume group vg that carry carve's owner tag (for a
// thin pool's VG: its thin volumes and snapshots, not the pool itself).
func (c *Cluster) LVsIn(ctx context.Context, vg string) ([]LV, error) {
	out, err := c.Guest(ctx, "lvs --noheadings --separator '|' --units b --nosuffix -o lv_name,lv_size,lv_tags "+vg)
	if err != nil {
		return nil, err
	}
	var lvs []LV
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(strings.TrimSpace(line), "|")
		if len(f) != 3 {
			continue
		}
		tags, err := lvm.ParseTags(f[2])
		if err != nil {
			return nil, fmt.Errorf("LV %s tags %q: %w", f[0], f[2], err)
		}
		if tags.Owner == "" {
			continue
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("LV %s size %q: %w", f[0], f[1], err)
		}
		lvs = append(lvs, LV{Name: f[0], SizeBytes: size, Tags: tags})
	}
	return lvs, nil
}

// CSIMounts lists the guest's mounts that belong to CSI volumes (kubelet's
// kubernetes.io~csi publish dirs and its CSI staging and block dirs) or whose
// source is in c.VG, as "TARGET SOURCE" lines.
func (c *Cluster) CSIMounts(ctx context.Context) ([]string, error) {
	out, err := c.Guest(ctx, "findmnt -rn -o TARGET,SOURCE")
	if err != nil {
		return nil, err
	}
	dmPrefix := "/dev/mapper/" + strings.ReplaceAll(c.VG, "-", "--") + "-"
	var m []string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "kubernetes.io~csi") || strings.Contains(line, "kubernetes.io/csi") ||
			strings.Contains(line, dmPrefix) || strings.Contains(line, "/dev/"+c.VG+"/") {
			m = append(m, strings.TrimSpace(line))
		}
	}
	return m, nil
}

// Capacity is what carve publishes for the node: the CSIStorageCapacity of
// c.StorageClass for c.Node and the NodeStorage's default pool.
type Capacity struct {
	CSICapacity  int64 // CSIStorageCapacity.capacity, bytes
	CSIMaxVolume int64 // CSIStorageCapacity.maximumVolumeSize, bytes
	NodeFree     int64 // NodeStorage status.freeBytes (default pool), bytes
}

func (c Capacity) String() string {
	return fmt.Sprintf("CSIStorageCapacity %s (max volume %s), NodeStorage free %s",
		Size(c.CSICapacity), Size(c.CSIMaxVolume), Size(c.NodeFree))
}

// CapacityRow is one CSIStorageCapacity object.
type CapacityRow struct {
	Name, StorageClass, Node string
	Capacity, MaxVolume      int64
}

// CapacityTable lists carve's CSIStorageCapacity objects, sorted by class and node.
func (c *Cluster) CapacityTable(ctx context.Context) ([]CapacityRow, error) {
	list, err := c.CS.StorageV1().CSIStorageCapacities(c.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list CSIStorageCapacity: %w", err)
	}
	var rows []CapacityRow
	for _, o := range list.Items {
		r := CapacityRow{Name: o.Name, StorageClass: o.StorageClassName, Capacity: -1, MaxVolume: -1}
		if o.NodeTopology != nil {
			r.Node = o.NodeTopology.MatchLabels[TopologyKey]
		}
		if o.Capacity != nil {
			r.Capacity = o.Capacity.Value()
		}
		if o.MaximumVolumeSize != nil {
			r.MaxVolume = o.MaximumVolumeSize.Value()
		}
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].StorageClass != rows[j].StorageClass {
			return rows[i].StorageClass < rows[j].StorageClass
		}
		return rows[i].Node < rows[j].Node
	})
	return rows, nil
}

// Capacity reads the node's published capacity; an error when the
// CSIStorageCapacity or the NodeStorage is missing.
func (c *Cluster) Capacity(ctx context.Context) (Capacity, error) {
	rows, err := c.CapacityTable(ctx)
	if err != nil {
		return Capacity{}, err
	}
	var cp Capacity
	found := 0
	for _, r := range rows {
		if r.StorageClass == c.StorageClass && r.Node == c.Node {
			cp.CSICapacity, cp.CSIMaxVolume = r.Capacity, r.MaxVolume
			found++
		}
	}
	if found != 1 {
		return cp, fmt.Errorf("%d CSIStorageCapacity objects for class %s and node %s, want 1", found, c.StorageClass, c.Node)
	}
	var ns carvev1.NodeStorage
	if err := c.C.Get(ctx, client.ObjectKey{Name: c.Node}, &ns); err != nil {
		return cp, fmt.Errorf("NodeStorage %s: %w", c.Node, err)
	}
	cp.NodeFree = ns.Status.FreeBytes
	return cp, nil
}

// WaitCapacity waits until the published capacity equals want (both the
// CSIStorageCapacity and NodeStorage). external-provisioner refreshes its
// objects on its poll interval, so this can take a minute.
func (c *Cluster) WaitCapacity(ctx context.Context, want Capacity, timeout time.Duration) error {
	var last Capacity
	var lastErr error
	err := Poll(ctx, timeout, 2*time.Second, func(ctx context.Context) (bool, error) {
		last, lastErr = c.Capacity(ctx)
		return lastErr == nil && last == want, nil
	})
	if err != nil {
		return fmt.Errorf("capacity not back to %v after %v: last %v (err %v)", want, timeout, last, lastErr)
	}
	return nil
}

// Poll calls cond every interval until it returns true or an error, or until
// timeout. The condition's error ends the wait at once.
func Poll(ctx context.Context, timeout, interval time.Duration, cond func(context.Context) (bool, error)) error {
	return wait.PollUntilContextTimeout(ctx, interval, timeout, true, cond)
}

// Size prints bytes in binary units, exactly when it can.
func Size(b int64) string {
	switch {
	case b < 0:
		return "-"
	case b >= 1<<30 && b%(1<<30) == 0:
		return fmt.Sprintf("%dGi", b>>30)
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%dMi", b>>20)
	case b >= 1<<30:
		return fmt.Sprintf("%.2fGi", float64(b)/(1<<30))
	default:
		return fmt.Sprintf("%dB", b)
	}
}

// Quantity is n bytes as a Kubernetes quantity.
func Quantity(n int64) resource.Quantity { return *resource.NewQuantity(n, resource.BinarySI) }

// PodOpts describes a test pod: one volume at /data (or the block device
// /dev/xvda), a check init container whose script's /dev/termination-log
// becomes the pod's InitMessage, and a main container that sleeps.
type PodOpts struct {
	Name      string
	Volume    corev1.VolumeSource
	Block     bool   // volumeDevices instead of volumeMounts
	Script    string // the init container's sh script; "" for none
	Security  *corev1.PodSecurityContext
	Container *corev1.SecurityContext
}

// DevicePath is where Block volumes appear in the containers.
const DevicePath = "/dev/xvda"

// NewPod builds the pod for o in namespace ns. It never pulls images (they
// are imported into containerd), mounts no service account token, and ends
// quickly when deleted.
func (c *Cluster) NewPod(ns string, o PodOpts) *corev1.Pod {
	ctr := corev1.Container{
		Name:                     "app",
		Image:                    c.Image,
		ImagePullPolicy:          corev1.PullNever,
		Command:                  []string{"sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"},
		SecurityContext:          o.Container,
		TerminationMessagePolicy: corev1.TerminationMessageReadFile,
	}
	if o.Block {
		ctr.VolumeDevices = []corev1.VolumeDevice{{Name: "vol", DevicePath: DevicePath}}
	} else {
		ctr.VolumeMounts = []corev1.VolumeMount{{Name: "vol", MountPath: "/data"}}
	}
	zero, no := int64(0), false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: ns, Labels: map[string]string{"app": "carve-scenario"}},
		Spec: corev1.PodSpec{
			NodeName:                      "", // the scheduler places it: capacity is part of the story
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  &no,
			TerminationGracePeriodSeconds: &zero,
			SecurityContext:               o.Security,
			Volumes:                       []corev1.Volume{{Name: "vol", VolumeSource: o.Volume}},
			Containers:                    []corev1.Container{ctr},
		},
	}
	if o.Script != "" {
		check := ctr
		check.Name = "check"
		check.Command = []string{"sh", "-c", o.Script}
		pod.Spec.InitContainers = []corev1.Container{check}
	}
	return pod
}

// EphemeralVolume is a generic ephemeral volume of size bytes in class sc
// (c.StorageClass when "").
func (c *Cluster) EphemeralVolume(sc string, size int64, mode corev1.PersistentVolumeMode) corev1.VolumeSource {
	if sc == "" {
		sc = c.StorageClass
	}
	return corev1.VolumeSource{Ephemeral: &corev1.EphemeralVolumeSource{
		VolumeClaimTemplate: &corev1.PersistentVolumeClaimTemplate{Spec: c.ClaimSpec(sc, size, mode, corev1.ReadWriteOnce)},
	}}
}

// ClaimSpec is a PVC spec for size bytes.
func (c *Cluster) ClaimSpec(sc string, size int64, mode corev1.PersistentVolumeMode, access corev1.PersistentVolumeAccessMode) corev1.PersistentVolumeClaimSpec {
	if sc == "" {
		sc = c.StorageClass
	}
	if mode == "" {
		mode = corev1.PersistentVolumeFilesystem
	}
	return corev1.PersistentVolumeClaimSpec{
		StorageClassName: &sc,
		VolumeMode:       &mode,
		AccessModes:      []corev1.PersistentVolumeAccessMode{access},
		Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: Quantity(size)}},
	}
}

// InlineVolume is a CSI inline ephemeral volume with these attributes.
func InlineVolume(attrs map[string]string) corev1.VolumeSource {
	return corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: Driver, VolumeAttributes: attrs}}
}

// PodEvents returns the events of the named object in ns, one per line, oldest first.
func (c *Cluster) PodEvents(ctx context.Context, ns, name string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	list, err := c.CS.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return "(events: " + err.Error() + ")"
	}
	sort.Slice(list.Items, func(i, j int) bool { return eventTime(list.Items[i]).Before(eventTime(list.Items[j])) })
	var b strings.Builder
	for _, e := range list.Items {
		fmt.Fprintf(&b, "    %s %s %s/%s %s: %s (x%d)\n", eventTime(e).UTC().Format("15:04:05"), e.Type,
			e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, strings.TrimSpace(e.Message), max(e.Count, 1))
	}
	if b.Len() == 0 {
		return "    (no events)\n"
	}
	return b.String()
}

func eventTime(e corev1.Event) time.Time {
	switch {
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

// Timeline lists, in seconds since the pod was created, what happened on its
// way to running: the events of the pod and its claims, its conditions and
// its containers' start and end. The scenarios log it so that a slow start
// shows where its time went (scheduling, provisioning, mount, containers).
func (c *Cluster) Timeline(ctx context.Context, pod *corev1.Pod) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	type mark struct {
		at   time.Time
		what string
	}
	var marks []mark
	objs := []string{pod.Name}
	for _, v := range pod.Spec.Volumes {
		switch {
		case v.Ephemeral != nil:
			objs = append(objs, pod.Name+"-"+v.Name)
		case v.PersistentVolumeClaim != nil:
			objs = append(objs, v.PersistentVolumeClaim.ClaimName)
		}
	}
	for _, o := range objs {
		list, err := c.CS.CoreV1().Events(pod.Namespace).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + o})
		if err != nil {
			marks = append(marks, mark{time.Now(), "events of " + o + ": " + err.Error()})
			continue
		}
		for _, e := range list.Items {
			// First occurrence: a repeated event's LastTimestamp would hide when it began.
			at := e.FirstTimestamp.Time
			if at.IsZero() {
				at = eventTime(e)
			}
			marks = append(marks, mark{at, fmt.Sprintf("%s %s: %s", e.InvolvedObject.Kind, e.Reason, firstLine(e.Message, 100))})
		}
	}
	for _, cd := range pod.Status.Conditions {
		marks = append(marks, mark{cd.LastTransitionTime.Time, fmt.Sprintf("condition %s=%s", cd.Type, cd.Status)})
	}
	for _, st := range append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
		switch {
		case st.State.Terminated != nil:
			marks = append(marks, mark{st.State.Terminated.StartedAt.Time, "container " + st.Name + " started"},
				mark{st.State.Terminated.FinishedAt.Time, "container " + st.Name + " finished"})
		case st.State.Running != nil:
			marks = append(marks, mark{st.State.Running.StartedAt.Time, "container " + st.Name + " started"})
		}
	}
	sort.SliceStable(marks, func(i, j int) bool { return marks[i].at.Before(marks[j].at) })
	created := pod.CreationTimestamp.Time
	var b strings.Builder
	fmt.Fprintf(&b, "timeline of pod %s (seconds since created, %s):\n", pod.Name, created.UTC().Format("15:04:05"))
	for _, m := range marks {
		fmt.Fprintf(&b, "    %+4.0fs %s\n", m.at.Sub(created).Seconds(), m.what)
	}
	return b.String()
}

func firstLine(s string, n int) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}

// Describe is the pod's phase, conditions and container states, and the
// events of the pod and its claims, for failure messages.
func (c *Cluster) Describe(ctx context.Context, ns, name string) string {
	ctx2, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	var b strings.Builder
	pod, err := c.CS.CoreV1().Pods(ns).Get(ctx2, name, metav1.GetOptions{})
	if err != nil {
		fmt.Fprintf(&b, "pod %s/%s: %v\n", ns, name, err)
	} else {
		fmt.Fprintf(&b, "pod %s/%s: phase %s, node %q\n", ns, name, pod.Status.Phase, pod.Spec.NodeName)
		for _, cd := range pod.Status.Conditions {
			fmt.Fprintf(&b, "    condition %s=%s %s %s\n", cd.Type, cd.Status, cd.Reason, cd.Message)
		}
		for _, s := range append(append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...),
			pod.Status.ContainerStatuses...), pod.Status.EphemeralContainerStatuses...) {
			fmt.Fprintf(&b, "    container %s: %s\n", s.Name, stateString(s.State))
		}
	}
	fmt.Fprintf(&b, "  events of pod %s:\n%s", name, c.PodEvents(ctx, ns, name))
	if pod != nil {
		for _, v := range pod.Spec.Volumes {
			claim := ""
			switch {
			case v.Ephemeral != nil:
				claim = pod.Name + "-" + v.Name
			case v.PersistentVolumeClaim != nil:
				claim = v.PersistentVolumeClaim.ClaimName
			}
			if claim != "" {
				fmt.Fprintf(&b, "  events of PVC %s:\n%s", claim, c.PodEvents(ctx, ns, claim))
			}
		}
	}
	return b.String()
}

func stateString(s corev1.ContainerState) string {
	switch {
	case s.Running != nil:
		return "running"
	case s.Waiting != nil:
		return fmt.Sprintf("waiting %s %s", s.Waiting.Reason, s.Waiting.Message)
	case s.Terminated != nil:
		return fmt.Sprintf("terminated exit %d %s %q", s.Terminated.ExitCode, s.Terminated.Reason, strings.TrimSpace(s.Terminated.Message))
	}
	return "unknown"
}

// ErrPodFailed is returned when a pod that should run ended Failed.
var ErrPodFailed = errors.New("pod failed")

// WaitPodRunning waits until the pod runs with its app container ready; on
// timeout or failure the error carries the pod's description and events.
func (c *Cluster) WaitPodRunning(ctx context.Context, ns, name string, timeout time.Duration) (*corev1.Pod, error) {
	var pod *corev1.Pod
	err := Poll(ctx, timeout, time.Second, func(ctx context.Context) (bool, error) {
		p, err := c.CS.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil // the API server may blink under load; the timeout bounds it
		}
		pod = p
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("%w: phase %s", ErrPodFailed, p.Status.Phase)
		}
		for _, s := range p.Status.ContainerStatuses {
			if s.Name == "app" && s.Ready && s.State.Running != nil {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return pod, fmt.Errorf("pod %s/%s not running after %v: %w\n%s", ns, name, timeout, err, c.Describe(ctx, ns, name))
	}
	return pod, nil
}

// InitMessage parses the check init container's termination message,
// "key=value" lines, into a map.
func InitMessage(pod *corev1.Pod) map[string]string {
	for _, s := range pod.Status.InitContainerStatuses {
		if s.Name == "check" && s.State.Terminated != nil {
			return ParseKV(s.State.Terminated.Message)
		}
	}
	return nil
}

// ParseKV parses "key=value" lines.
func ParseKV(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			m[k] = v
		}
	}
	return m
}

// RunInPod runs script in a new ephemeral container of the running pod
// (kubelet starts it; no exec stream through the API server is needed) with
// the pod's volume at /data, or the device at DevicePath for block volumes,
// and returns what the script wrote to /dev/termination-log and its exit code.
func (c *Cluster) RunInPod(ctx context.Context, ns, podName, ctrName, script string, block bool, timeout time.Duration) (string, int32, error) {
	ec := corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
		Name:                     ctrName,
		Image:                    c.Image,
		ImagePullPolicy:          corev1.PullNever,
		Command:                  []string{"sh", "-c", script},
		TerminationMessagePolicy: corev1.TerminationMessageReadFile,
	}}
	if block {
		ec.VolumeDevices = []corev1.VolumeDevice{{Name: "vol", DevicePath: DevicePath}}
	} else {
		ec.VolumeMounts = []corev1.VolumeMount{{Name: "vol", MountPath: "/data"}}
	}
	// kubelet's status updates change the pod's resourceVersion under us.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := c.CS.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, ctr := range pod.Spec.Containers {
			if ctr.Name == "app" {
				ec.SecurityContext = ctr.SecurityContext
			}
		}
		pod.Spec.EphemeralContainers = append(pod.Spec.EphemeralContainers, ec)
		_, err = c.CS.CoreV1().Pods(ns).UpdateEphemeralContainers(ctx, podName, pod, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return "", 0, fmt.Errorf("add ephemeral container %s to %s: %w", ctrName, podName, err)
	}
	var term *corev1.ContainerStateTerminated
	err = Poll(ctx, timeout, time.Second, func(ctx context.Context) (bool, error) {
		p, err := c.CS.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, s := range p.Status.EphemeralContainerStatuses {
			if s.Name == ctrName && s.State.Terminated != nil {
				term = s.State.Terminated
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return "", 0, fmt.Errorf("ephemeral container %s in %s did not finish in %v: %w\n%s", ctrName, podName, timeout, err, c.Describe(ctx, ns, podName))
	}
	return term.Message, term.ExitCode, nil
}

// DeletePod deletes the pod and waits until it is gone.
func (c *Cluster) DeletePod(ctx context.Context, ns, name string, timeout time.Duration) error {
	zero := int64(0)
	err := c.CS.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s: %w", name, err)
	}
	err = Poll(ctx, timeout, time.Second, func(ctx context.Context) (bool, error) {
		_, err := c.CS.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		return fmt.Errorf("pod %s/%s still there after %v: %w\n%s", ns, name, timeout, err, c.Describe(ctx, ns, name))
	}
	return nil
}

// Volume is what a bound claim is made of, recorded while it exists so that
// its removal can be checked.
type Volume struct {
	Claim       string // namespace/name
	PV          string // PV name = CSI volume name
	LocalVolume string // PV volumeHandle = LocalVolume name
	LV          string // LV name in the guest
	SizeBytes   int64  // LV size
	VG          string // the LV's volume group ("" = c.VG)
	Source      string // the LV's carve.source tag: the snapshot or volume it was made from
}

// BoundVolume follows claim ns/name to its PV, LocalVolume and LV in c.VG.
func (c *Cluster) BoundVolume(ctx context.Context, ns, name string) (Volume, error) {
	return c.BoundVolumeIn(ctx, ns, name, c.VG)
}

// BoundVolumeIn follows claim ns/name to its PV, LocalVolume and LV in volume group vg.
func (c *Cluster) BoundVolumeIn(ctx context.Context, ns, name, vg string) (Volume, error) {
	v := Volume{Claim: ns + "/" + name, VG: vg}
	pvc, err := c.CS.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return v, fmt.Errorf("PVC %s: %w", v.Claim, err)
	}
	if pvc.Spec.VolumeName == "" {
		return v, fmt.Errorf("PVC %s is not bound (phase %s)", v.Claim, pvc.Status.Phase)
	}
	v.PV = pvc.Spec.VolumeName
	pv, err := c.CS.CoreV1().PersistentVolumes().Get(ctx, v.PV, metav1.GetOptions{})
	if err != nil {
		return v, fmt.Errorf("PV %s: %w", v.PV, err)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != Driver {
		return v, fmt.Errorf("PV %s is not a %s volume", v.PV, Driver)
	}
	v.LocalVolume = pv.Spec.CSI.VolumeHandle
	var lv carvev1.LocalVolume
	if err := c.C.Get(ctx, client.ObjectKey{Name: v.LocalVolume}, &lv); err != nil {
		return v, fmt.Errorf("LocalVolume %s of PV %s: %w", v.LocalVolume, v.PV, err)
	}
	if lv.Spec.NodeName != c.Node || lv.Status.Phase != carvev1.PhaseReady {
		return v, fmt.Errorf("LocalVolume %s: node %q phase %q, want %q Ready", lv.Name, lv.Spec.NodeName, lv.Status.Phase, c.Node)
	}
	lvs, err := c.LVsIn(ctx, vg)
	if err != nil {
		return v, err
	}
	for _, l := range lvs {
		if l.Tags.Name == v.PV {
			v.LV, v.SizeBytes, v.Source = l.Name, l.SizeBytes, l.Tags.Source
		}
	}
	if v.LV == "" {
		return v, fmt.Errorf("no LV in %s tagged with CSI name %s", vg, v.PV)
	}
	return v, nil
}

// WaitVolumeGone waits until the claim, PV, LocalVolume and LV of v are all
// gone; the error names what is left.
func (c *Cluster) WaitVolumeGone(ctx context.Context, v Volume, timeout time.Duration) error {
	ns, name, _ := strings.Cut(v.Claim, "/")
	vg := v.VG
	if vg == "" {
		vg = c.VG
	}
	var left []string
	err := Poll(ctx, timeout, 2*time.Second, func(ctx context.Context) (bool, error) {
		left = left[:0]
		if _, err := c.CS.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			left = append(left, "PVC "+v.Claim)
		}
		if _, err := c.CS.CoreV1().PersistentVolumes().Get(ctx, v.PV, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			left = append(left, "PV "+v.PV)
		}
		var lv carvev1.LocalVolume
		if err := c.C.Get(ctx, client.ObjectKey{Name: v.LocalVolume}, &lv); !apierrors.IsNotFound(err) {
			left = append(left, fmt.Sprintf("LocalVolume %s (finalizers %v, phase %s)", v.LocalVolume, lv.Finalizers, lv.Status.Phase))
		}
		if len(left) > 0 {
			// lvs runs in the emulated guest: not while the node is still
			// tearing the volume down and the objects say it is not gone.
			return false, nil
		}
		lvs, err := c.LVsIn(ctx, vg)
		if err != nil {
			left = append(left, "lvs: "+err.Error())
		}
		for _, l := range lvs {
			if l.Name == v.LV {
				left = append(left, "LV "+vg+"/"+v.LV)
			}
		}
		return len(left) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("volume of %s not cleaned up after %v, left: %s", v.Claim, timeout, strings.Join(left, "; "))
	}
	return nil
}

// InlineLV finds the LV of the inline volume of the pod with this UID (its
// carve.target tag is the pod's target path, which holds the UID).
func (c *Cluster) InlineLV(ctx context.Context, podUID types.UID) (LV, bool, error) {
	lvs, err := c.LVs(ctx)
	if err != nil {
		return LV{}, false, err
	}
	for _, l := range lvs {
		if l.Tags.Ephemeral && strings.Contains(l.Tags.TargetPath, "/"+string(podUID)+"/") {
			return l, true, nil
		}
	}
	return LV{}, false, nil
}
