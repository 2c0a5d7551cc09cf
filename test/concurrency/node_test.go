package concurrency

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/driver"
	"github.com/carve-csi/carve/test/lvmtest"
)

// The mix of TestConcurrentNodeAndController: 200 goroutines against one
// node on a real, activatable volume group (CARVE_CONCURRENCY_VG).
const (
	nodeCtrlNames  = 44 // controller names, 2 creates each; odd ones are then deleted
	nodeMismatched = 5  // repeat kept names 0, 2, ... with an incompatible size: AlreadyExists
	nodeTooBig     = 4  // creates larger than the VG: ResourceExhausted
	tripleVols     = 25 // inline volumes published 3 times at the same target, then unpublished 3 times
	pairVols       = 10 // inline volume ids published at two targets at once: one OK, one AlreadyExists
	fillVols       = 8  // big inline volumes that cannot all fit: fillOK succeed, the rest ResourceExhausted
	fillOK         = 4
	smallBytes     = 16 << 20
	// Every call of a loaded, emulated VM is slow; this only bounds a hang.
	nodeCallTimeout = 10 * time.Minute
)

// nodeOutcome is one CSI call's result and the codes its situation allows.
type nodeOutcome struct {
	g       int
	op      string // create, delete, publish, unpublish
	name    string
	allowed []codes.Code
	got     codes.Code
	msg     string
}

func (o *nodeOutcome) set(err error) {
	st, _ := status.FromError(err)
	o.got, o.msg = st.Code(), st.Message()
}

func (o *nodeOutcome) expected() bool {
	for _, c := range o.allowed {
		if o.got == c {
			return true
		}
	}
	return false
}

// TestConcurrentNodeAndController mixes controller creates and deletes with
// inline ephemeral publishes and unpublishes (create, activate, mkfs, mount;
// unmount, remove) on a VG with working device-mapper: the VM rig runs it
// with CARVE_CONCURRENCY_VG=<vg> (hack/e2e-guest.sh). Every call must answer
// a code its situation allows, every success must have exactly one LV (and
// one mount for a publish), and at the end no mount and no LV is left and
// GetCapacity equals vgs vg_free.
func TestConcurrentNodeAndController(t *testing.T) {
	vgName := os.Getenv("CARVE_CONCURRENCY_VG")
	if vgName == "" {
		t.Skip("skipping: CARVE_CONCURRENCY_VG is not set; inline publishes need a volume group with working " +
			"device-mapper (make test-e2e runs this in the VM)")
	}
	if os.Geteuid() != 0 || !lvmtest.DeviceMapperAvailable() {
		t.Fatalf("CARVE_CONCURRENCY_VG=%s, but this is not root with working device-mapper", vgName)
	}
	info := &lvmtest.VG{Name: vgName, Runner: &exec.Host{}}
	if left := carveLVs(t, info); len(left) != 0 {
		t.Fatalf("volume group %s already holds carve LVs: %v", vgName, keys(left))
	}
	free0, vgSize := vgFree(t, info)
	extent := vgFigures(t, info).ExtentBytes
	// The fill volumes' size S: fillOK of them fit even beside every small
	// volume at its peak, fillOK+1 never fit, so exactly fillOK succeed.
	smallPeak := int64(nodeCtrlNames+tripleVols+pairVols) * alignUp(smallBytes, extent)
	fillBytes := (free0 - smallPeak) / fillOK / extent * extent
	if fillBytes*(fillOK+1) <= free0 || fillBytes < smallBytes {
		t.Fatalf("volume group %s: %d bytes free is too small or too large for the fill plan (fill %d bytes)", vgName, free0, fillBytes)
	}

	kubelet := filepath.Join(t.TempDir(), "kubelet")
	if err := os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	p := driver.Start(t, nil, "--mode=node", "--nodeid=conc", "--pool=default=lvm:"+vgName,
		"--kubelet-dir="+kubelet, "--standalone", "--v=2")
	conn, err := grpc.NewClient("unix://"+p.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctrl, node := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	mountCap := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}

	var (
		mu       sync.Mutex
		outcomes []nodeOutcome
		problems []string // duplicate or missing LVs and mounts, bad data
		dups     int
		missing  int
	)
	record := func(o nodeOutcome) {
		mu.Lock()
		outcomes = append(outcomes, o)
		mu.Unlock()
	}
	problem := func(dup, miss bool, format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		problems = append(problems, fmt.Sprintf(format, args...))
		if dup {
			dups++
		}
		if miss {
			missing++
		}
	}
	call := func(f func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(context.Background(), nodeCallTimeout)
		defer cancel()
		return f(ctx)
	}
	createCall := func(o *nodeOutcome, required, limit int64) {
		o.op = "create"
		o.set(call(func(ctx context.Context) error {
			_, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: o.name,
				VolumeCapabilities: []*csi.VolumeCapability{mountCap},
				CapacityRange:      &csi.CapacityRange{RequiredBytes: required, LimitBytes: limit}})
			return err
		}))
	}
	target := func(vol string) string {
		dir := filepath.Join(kubelet, "pods", "pod-"+vol, "volumes", "kubernetes.io~csi", vol)
		if err := os.MkdirAll(dir, 0o750); err != nil { // kubelet's part
			t.Fatal(err)
		}
		return filepath.Join(dir, "mount")
	}
	publish := func(o *nodeOutcome, tgt string, size int64) {
		o.op = "publish"
		o.set(call(func(ctx context.Context) error {
			_, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: o.name, TargetPath: tgt,
				VolumeCapability: mountCap, VolumeContext: map[string]string{
					"csi.storage.k8s.io/ephemeral": "true",
					"csi.storage.k8s.io/pod.name":  "pod-" + o.name,
					"size":                         strconv.FormatInt(size, 10),
				}})
			return err
		}))
	}
	unpublish := func(o *nodeOutcome, tgt string) {
		o.op = "unpublish"
		o.set(call(func(ctx context.Context) error {
			_, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: o.name, TargetPath: tgt})
			return err
		}))
	}
	// checkPublished: exactly one LV for the inline volume, of its size,
	// mounted once at tgt, and a file written through the mount reads back.
	checkPublished := func(id, tgt string, size int64) {
		lvs, err := lvsNamed(info, names.VolumeID(id))
		if err != nil {
			problem(false, false, "lvs for %s: %v", id, err)
			return
		}
		switch {
		case len(lvs) == 0:
			problem(false, true, "inline %s published, but no LV %s", id, names.VolumeID(id))
			return
		case len(lvs) > 1:
			problem(true, false, "inline %s: %d LVs", id, len(lvs))
		}
		lv := lvs[0]
		if lv.SizeBytes != alignUp(size, extent) || !strings.Contains(lv.Tags, "carve.ephemeral=true") ||
			!strings.Contains(lv.Tags, "carve.target="+base64.RawURLEncoding.EncodeToString([]byte(tgt))) {
			problem(false, false, "inline %s: LV %s has %d bytes, tags %s; want %d bytes, ephemeral, target %s",
				id, lv.Name, lv.SizeBytes, lv.Tags, alignUp(size, extent), tgt)
		}
		ms, err := mountsAt(tgt)
		if err != nil {
			problem(false, false, "mountinfo: %v", err)
			return
		}
		var st unix.Stat_t
		if err := unix.Stat("/dev/"+vgName+"/"+lv.Name, &st); err != nil {
			problem(false, true, "inline %s: device node: %v", id, err)
			return
		}
		switch {
		case len(ms) == 0:
			problem(false, true, "inline %s: nothing mounted at %s", id, tgt)
			return
		case len(ms) > 1:
			problem(true, false, "inline %s: %d mounts at %s", id, len(ms), tgt)
		}
		if ms[0] != fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)) {
			problem(false, true, "inline %s: %s is mounted from %s, not from LV %s", id, tgt, ms[0], lv.Name)
		}
		data := []byte("written through the mount of " + id + "\n")
		f := filepath.Join(tgt, "hello")
		if err := os.WriteFile(f, data, 0o644); err != nil {
			problem(false, false, "write %s: %v", f, err)
		} else if got, err := os.ReadFile(f); err != nil || string(got) != string(data) {
			problem(false, false, "read back %s: %q, %v", f, got, err)
		}
	}
	// checkGone: after the unpublishes, no LV and no mount is left.
	checkGone := func(id, tgt string) {
		if lvs, err := lvsNamed(info, names.VolumeID(id)); err != nil || len(lvs) != 0 {
			problem(false, false, "inline %s after unpublish: LVs %v, %v", id, lvs, err)
		}
		if ms, err := mountsAt(tgt); err != nil || len(ms) != 0 {
			problem(false, false, "inline %s after unpublish: mounts at %s: %v, %v", id, tgt, ms, err)
		}
	}

	// Plan, by goroutine number g:
	//   controller: 2 creates per name, then the first deletes odd names;
	//     mismatched repeats and too-big creates;
	//   triples: 3 publishes of one inline volume at one target, a check,
	//     3 unpublishes;
	//   pairs: one inline id at two targets: one OK, one AlreadyExists; the
	//     winner checks and unpublishes (kubelet never unpublishes a failed
	//     publish);
	//   fill: big inline volumes, held until every fill publish has returned.
	var (
		ctrlCreates         [nodeCtrlNames]sync.WaitGroup
		tripleDone, triples [tripleVols]sync.WaitGroup
		pairDone            [pairVols]sync.WaitGroup
		fillDone            sync.WaitGroup
		pairWins            [pairVols]int
		fillWins            int
		wg                  sync.WaitGroup
		start               = make(chan struct{})
	)
	var plan []func(g int)
	for n := range nodeCtrlNames {
		for k := range 2 {
			ctrlCreates[n].Add(1)
			plan = append(plan, func(g int) {
				o := nodeOutcome{g: g, name: fmt.Sprintf("pvc-cn-%02d", n), allowed: []codes.Code{codes.OK}}
				createCall(&o, smallBytes, smallBytes)
				ctrlCreates[n].Done()
				record(o)
				if n%2 == 0 || k != 0 || o.got != codes.OK {
					return
				}
				ctrlCreates[n].Wait()
				d := nodeOutcome{g: g, op: "delete", name: o.name, allowed: []codes.Code{codes.OK}}
				d.set(call(func(ctx context.Context) error {
					_, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: names.VolumeID(o.name)})
					return err
				}))
				d.op = "delete"
				record(d)
			})
		}
	}
	for i := range nodeMismatched {
		plan = append(plan, func(g int) {
			ctrlCreates[2*i].Wait()
			o := nodeOutcome{g: g, name: fmt.Sprintf("pvc-cn-%02d", 2*i), allowed: []codes.Code{codes.AlreadyExists}}
			createCall(&o, 4*smallBytes, 0)
			record(o)
		})
	}
	for i := range nodeTooBig {
		plan = append(plan, func(g int) {
			o := nodeOutcome{g: g, name: fmt.Sprintf("pvc-cn-big-%d", i), allowed: []codes.Code{codes.ResourceExhausted}}
			createCall(&o, 2*vgSize, 0)
			record(o)
		})
	}
	for v := range tripleVols {
		id, tgt := fmt.Sprintf("csi-conc-t%02d", v), target(fmt.Sprintf("t%02d", v))
		for k := range 3 {
			triples[v].Add(1)
			tripleDone[v].Add(1)
			plan = append(plan, func(g int) {
				o := nodeOutcome{g: g, name: id, allowed: []codes.Code{codes.OK}}
				publish(&o, tgt, smallBytes)
				triples[v].Done()
				record(o)
				triples[v].Wait()
				if k == 0 && o.got == codes.OK {
					checkPublished(id, tgt, smallBytes)
				}
				tripleDone[v].Done()
				tripleDone[v].Wait() // the check is done: unpublish all at once
				u := nodeOutcome{g: g, name: id, allowed: []codes.Code{codes.OK}}
				unpublish(&u, tgt)
				record(u)
			})
		}
	}
	for v := range pairVols {
		id := fmt.Sprintf("csi-conc-p%02d", v)
		for k := range 2 {
			pairDone[v].Add(1)
			tgt := target(fmt.Sprintf("p%02d-%d", v, k))
			plan = append(plan, func(g int) {
				o := nodeOutcome{g: g, name: id, allowed: []codes.Code{codes.OK, codes.AlreadyExists}}
				publish(&o, tgt, smallBytes)
				if o.got == codes.OK {
					mu.Lock()
					pairWins[v]++
					mu.Unlock()
				}
				pairDone[v].Done()
				record(o)
				if o.got != codes.OK {
					if ms, err := mountsAt(tgt); err != nil || len(ms) != 0 {
						problem(false, false, "inline %s refused at %s, yet mounted there: %v, %v", id, tgt, ms, err)
					}
					return
				}
				pairDone[v].Wait() // the other publish has seen this volume
				checkPublished(id, tgt, smallBytes)
				u := nodeOutcome{g: g, name: id, allowed: []codes.Code{codes.OK}}
				unpublish(&u, tgt)
				record(u)
				checkGone(id, tgt)
			})
		}
	}
	for v := range fillVols {
		fillDone.Add(1)
		id, tgt := fmt.Sprintf("csi-conc-f%02d", v), target(fmt.Sprintf("f%02d", v))
		plan = append(plan, func(g int) {
			o := nodeOutcome{g: g, name: id, allowed: []codes.Code{codes.OK, codes.ResourceExhausted}}
			publish(&o, tgt, fillBytes)
			if o.got == codes.OK {
				mu.Lock()
				fillWins++
				mu.Unlock()
			}
			fillDone.Done()
			record(o)
			if o.got != codes.OK {
				return
			}
			fillDone.Wait() // every fill publish has returned while this one held its space
			checkPublished(id, tgt, fillBytes)
			u := nodeOutcome{g: g, name: id, allowed: []codes.Code{codes.OK}}
			unpublish(&u, tgt)
			record(u)
			checkGone(id, tgt)
		})
	}
	if len(plan) != goroutines {
		t.Fatalf("plan has %d goroutines, want %d", len(plan), goroutines)
	}
	began := time.Now()
	for g, f := range plan {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			f(g)
		}()
	}
	close(start)
	wg.Wait()
	elapsed := time.Since(began)
	for v := range tripleVols {
		checkGone(fmt.Sprintf("csi-conc-t%02d", v), filepath.Join(kubelet, "pods", fmt.Sprintf("pod-t%02d", v),
			"volumes", "kubernetes.io~csi", fmt.Sprintf("t%02d", v), "mount"))
	}

	// Per-call codes and per-group counts.
	counts := map[string]int{}
	unexpected := 0
	for _, o := range outcomes {
		counts[o.op]++
		if !o.expected() {
			unexpected++
			t.Errorf("goroutine %d: %s %s: got %v (%s), want one of %v", o.g, o.op, o.name, o.got, o.msg, o.allowed)
		}
	}
	for v, w := range pairWins {
		if w != 1 {
			unexpected++
			t.Errorf("inline csi-conc-p%02d at two targets: %d publishes succeeded, want exactly 1", v, w)
		}
	}
	if fillWins != fillOK {
		unexpected++
		t.Errorf("fill: %d of %d publishes of %d bytes succeeded with %d bytes free, want exactly %d",
			fillWins, fillVols, fillBytes, free0, fillOK)
	}
	for _, p := range problems {
		t.Error(p)
	}
	wantCalls := 2*nodeCtrlNames + nodeCtrlNames/2 + nodeMismatched + nodeTooBig + 6*tripleVols + 2*pairVols + pairVols + fillVols + fillOK
	if len(outcomes) != wantCalls {
		t.Errorf("%d calls recorded, want %d", len(outcomes), wantCalls)
	}

	// What is left: the even controller names, by ListVolumes and by lvs;
	// no mount under the kubelet directory; capacity = vgs vg_free.
	want := map[string]int64{}
	for n := 0; n < nodeCtrlNames; n += 2 {
		want[names.VolumeID(fmt.Sprintf("pvc-cn-%02d", n))] = alignUp(smallBytes, extent)
	}
	listed := listVolumes(t, ctrl)
	sameSet(t, "ListVolumes", listed, want)
	sameSet(t, "lvs", carveLVs(t, info), want)
	if ms, err := mountsUnder(kubelet); err != nil || len(ms) != 0 {
		t.Errorf("mounts left under the kubelet directory: %v, %v", ms, err)
	}
	free, _ := vgFree(t, info)
	capa := capacity(t, ctrl)
	capEq := "capacity == vgs free"
	if capa != free {
		capEq = fmt.Sprintf("capacity %d != vgs free %d", capa, free)
		t.Errorf("GetCapacity available_capacity %d, vgs vg_free %d", capa, free)
	}
	fmt.Printf("concurrency: %d calls (%d create, %d delete, %d publish, %d unpublish) from %d goroutines in %v, %d unexpected, %d duplicate, %d missing; %s\n",
		len(outcomes), counts["create"], counts["delete"], counts["publish"], counts["unpublish"], goroutines,
		elapsed.Round(time.Second), unexpected, dups, missing, capEq)
	fmt.Printf("concurrency: inline at one target x3: %d volumes; one id at two targets: %d pairs, one AlreadyExists each; fill: %d of %d publishes of %d MiB fit in %d MiB free, the rest ResourceExhausted; %d other problems\n",
		tripleVols, pairVols, fillWins, fillVols, fillBytes>>20, free0>>20, len(problems)-dups-missing)

	for id := range listed {
		ctx, cancel := context.WithTimeout(context.Background(), nodeCallTimeout)
		_, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		cancel()
		if err != nil {
			t.Errorf("DeleteVolume %s: %v", id, err)
		}
	}
	left := carveLVs(t, info)
	if len(left) != 0 {
		t.Errorf("carve LVs left after deleting every volume: %v", keys(left))
	}
	free, _ = vgFree(t, info)
	if capa = capacity(t, ctrl); capa != free || free != free0 {
		t.Errorf("after deleting every volume: GetCapacity %d, vgs vg_free %d, at the start %d", capa, free, free0)
	}
	fmt.Printf("concurrency: after deleting all: %d carve LVs, capacity %d, vgs free %d, at the start %d\n", len(left), capa, free, free0)
}

func alignUp(n, align int64) int64 { return (n + align - 1) / align * align }

// lvsNamed returns the LVs of the VG called name (goroutine-safe: no t).
func lvsNamed(info *lvmtest.VG, name string) ([]lvmtest.LV, error) {
	ctx, cancel := context.WithTimeout(context.Background(), nodeCallTimeout)
	defer cancel()
	all, err := lvmtest.LVs(ctx, info.Runner, info.Name)
	if err != nil {
		return nil, err
	}
	var out []lvmtest.LV
	for _, lv := range all {
		if lv.Name == name {
			out = append(out, lv)
		}
	}
	return out, nil
}

// mountinfo returns (mount point, major:minor) of every mount, by
// /proc/self/mountinfo.
func mountinfo() ([][2]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out [][2]string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			return nil, fmt.Errorf("unexpected mountinfo line %q", line)
		}
		// Paths here have no spaces, so the \040-style escapes never occur.
		out = append(out, [2]string{f[4], f[2]})
	}
	return out, nil
}

// mountsAt returns the device numbers of the mounts at path.
func mountsAt(path string) ([]string, error) {
	all, err := mountinfo()
	var out []string
	for _, m := range all {
		if m[0] == path {
			out = append(out, m[1])
		}
	}
	return out, err
}

// mountsUnder returns the mount points below dir.
func mountsUnder(dir string) ([]string, error) {
	all, err := mountinfo()
	var out []string
	for _, m := range all {
		if strings.HasPrefix(m[0], dir+"/") {
			out = append(out, m[0])
		}
	}
	return out, err
}
