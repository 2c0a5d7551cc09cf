// Package concurrency proves that one carve-csi node process keeps its
// volumes and its capacity report exact under 200 concurrent CSI calls with
// colliding names, on a real (metadata-only) lvm2 volume group.
package concurrency

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/driver"
	"github.com/carve-csi/carve/test/lvmtest"
)

const (
	vgBytes    = 64 << 30
	goroutines = 200
	nameCount  = 60 // names 0-29 are kept, names 30-59 are deleted
	keptNames  = 30
	tooBig     = 5 // goroutines asking for more than the VG holds
	mismatched = 5 // goroutines repeating a kept name with a much larger size
	maxRetries = 20
)

func volName(i int) string { return fmt.Sprintf("pvc-conc-%02d", i) }

// nameSize is fixed per name, so that every repeat of a name is compatible.
func nameSize(i int) int64 {
	if i%2 == 0 {
		return 64 << 20
	}
	return 128 << 20
}

// outcome is one CSI call's result.
type outcome struct {
	g       int
	op      string // "create" or "delete"
	name    string
	want    codes.Code
	got     codes.Code
	msg     string
	id      string
	bytes   int64
	aborted int // Aborted answers that a retry then got past
}

func TestConcurrentControllerCalls(t *testing.T) {
	info := lvmtest.NewVGInfo(t, vgBytes, "")
	p := driver.Start(t, lvmtest.Env(info.ConfigDir), "--mode=node", "--nodeid=conc", "--pool=default=lvm:"+info.Name,
		"--kubelet-dir="+t.TempDir(), "--standalone", "--v=0")
	conn, err := grpc.NewClient("unix://"+p.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctrl := csi.NewControllerClient(conn)
	caps := []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}

	// call runs one CSI call, retrying while it answers Aborted.
	call := func(o *outcome, f func(ctx context.Context) error) {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			err := f(ctx)
			cancel()
			st, _ := status.FromError(err)
			o.got, o.msg = st.Code(), st.Message()
			if o.got != codes.Aborted || o.aborted >= maxRetries {
				return
			}
			o.aborted++
			time.Sleep(10 * time.Millisecond)
		}
	}
	create := func(o *outcome, required, limit int64) {
		o.op = "create"
		call(o, func(ctx context.Context) error {
			resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: o.name, VolumeCapabilities: caps,
				CapacityRange: &csi.CapacityRange{RequiredBytes: required, LimitBytes: limit}})
			o.id, o.bytes = resp.GetVolume().GetVolumeId(), resp.GetVolume().GetCapacityBytes()
			return err
		})
	}

	// Plan: goroutines 0-4 ask for more than the VG; 5-9 repeat names 0-4
	// with 1 GiB once every compatible create of that name has returned;
	// 10-199 create names (g-10)%60, 3 or 4 goroutines per name; for names
	// 30-59 the first of them deletes the volume once every create of that
	// name has returned.
	var creates [nameCount]sync.WaitGroup
	for g := tooBig + mismatched; g < goroutines; g++ {
		creates[(g-tooBig-mismatched)%nameCount].Add(1)
	}
	var (
		mu       sync.Mutex
		outcomes []outcome
		wg       sync.WaitGroup
		start    = make(chan struct{})
	)
	record := func(o outcome) {
		mu.Lock()
		outcomes = append(outcomes, o)
		mu.Unlock()
	}
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			switch {
			case g < tooBig:
				o := outcome{g: g, name: fmt.Sprintf("pvc-conc-big-%d", g), want: codes.ResourceExhausted}
				create(&o, 2*vgBytes, 0)
				record(o)
			case g < tooBig+mismatched:
				n := g - tooBig
				creates[n].Wait()
				o := outcome{g: g, name: volName(n), want: codes.AlreadyExists}
				create(&o, 1<<30, 0)
				record(o)
			default:
				k := g - tooBig - mismatched
				n := k % nameCount
				o := outcome{g: g, name: volName(n), want: codes.OK}
				create(&o, nameSize(n), nameSize(n))
				creates[n].Done()
				record(o)
				if n < keptNames || k >= nameCount || o.got != codes.OK {
					return
				}
				creates[n].Wait()
				d := outcome{g: g, op: "delete", name: o.name, want: codes.OK, id: o.id}
				call(&d, func(ctx context.Context) error {
					_, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: d.id})
					return err
				})
				d.op = "delete"
				record(d)
			}
		}()
	}
	close(start)
	wg.Wait()

	// Per-call outcomes.
	var ok, exists, exhausted, unexpected, retried int
	ids := map[string]string{} // name -> id from its successful creates
	for _, o := range outcomes {
		retried += o.aborted
		if o.got != o.want {
			unexpected++
			t.Errorf("goroutine %d: %s %s: got %v (%s), want %v", o.g, o.op, o.name, o.got, o.msg, o.want)
			continue
		}
		switch o.got {
		case codes.OK:
			ok++
		case codes.AlreadyExists:
			exists++
		case codes.ResourceExhausted:
			exhausted++
		}
		if o.op != "create" || o.got != codes.OK {
			continue
		}
		n, _ := strconv.Atoi(strings.TrimPrefix(o.name, "pvc-conc-"))
		if want := names.VolumeID(o.name); o.id != want {
			t.Errorf("goroutine %d: create %s: id %q, want %q", o.g, o.name, o.id, want)
		}
		if o.bytes != nameSize(n) {
			t.Errorf("goroutine %d: create %s: %d bytes, want %d", o.g, o.name, o.bytes, nameSize(n))
		}
		if prev, seen := ids[o.name]; seen && prev != o.id {
			t.Errorf("create %s: two ids, %q and %q", o.name, prev, o.id)
		}
		ids[o.name] = o.id
	}
	if len(outcomes) != goroutines+nameCount-keptNames {
		t.Errorf("%d outcomes recorded, want %d", len(outcomes), goroutines+nameCount-keptNames)
	}

	// The surviving volumes: names 0-29, by ListVolumes, by lvs, once each.
	want := map[string]int64{}
	for n := range keptNames {
		want[names.VolumeID(volName(n))] = nameSize(n)
	}
	listed := listVolumes(t, ctrl)
	lvs := carveLVs(t, info)
	sameSet(t, "ListVolumes", listed, want)
	sameSet(t, "lvs", lvs, want)
	for id, b := range listed {
		if w, ok := want[id]; ok && b != w {
			t.Errorf("ListVolumes: %s has %d bytes, want %d", id, b, w)
		}
	}
	free, size := vgFree(t, info)
	capa := capacity(t, ctrl)
	if capa != free {
		t.Errorf("GetCapacity available_capacity %d, vgs vg_free %d", capa, free)
	}
	capEq := "capacity = vgs free"
	if capa != free {
		capEq = fmt.Sprintf("capacity %d != vgs free %d", capa, free)
	}
	fmt.Printf("concurrency: %d goroutines, %d calls, %d ok, %d AlreadyExists, %d ResourceExhausted, %d unexpected (%d Aborted retried); LVs = %d, volumes = %d (want %d); %s\n",
		goroutines, len(outcomes), ok, exists, exhausted, unexpected, retried, len(lvs), len(listed), len(want), capEq)

	// Delete everything; nothing may be left and the whole VG is free again.
	for id := range listed {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		cancel()
		if err != nil {
			t.Errorf("DeleteVolume %s: %v", id, err)
		}
	}
	if left := carveLVs(t, info); len(left) != 0 {
		t.Errorf("carve LVs left after deleting every volume: %v", keys(left))
	}
	if left := listVolumes(t, ctrl); len(left) != 0 {
		t.Errorf("ListVolumes after deleting every volume: %v", keys(left))
	}
	capa = capacity(t, ctrl)
	if capa != size {
		t.Errorf("after deleting every volume: GetCapacity %d, vg_size %d", capa, size)
	}
	fmt.Printf("concurrency: after deleting all: %d carve LVs, %d volumes, capacity %d, vg_size %d\n",
		len(carveLVs(t, info)), len(listVolumes(t, ctrl)), capa, size)
}

// listVolumes pages through ListVolumes 7 at a time; a volume listed twice fails.
func listVolumes(t *testing.T, ctrl csi.ControllerClient) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	token := ""
	for page := 0; ; page++ {
		if page > 100 {
			t.Fatal("ListVolumes: more than 100 pages")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		resp, err := ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 7, StartingToken: token})
		cancel()
		if err != nil {
			t.Fatalf("ListVolumes: %v", err)
		}
		if len(resp.GetEntries()) > 7 {
			t.Errorf("ListVolumes: %d entries in a page of max 7", len(resp.GetEntries()))
		}
		for _, e := range resp.GetEntries() {
			id := e.GetVolume().GetVolumeId()
			if _, dup := out[id]; dup {
				t.Errorf("ListVolumes: %s listed twice", id)
			}
			out[id] = e.GetVolume().GetCapacityBytes()
		}
		if token = resp.GetNextToken(); token == "" {
			return out
		}
	}
}

// carveLVs returns the LVs of the VG tagged carve.owner=, by lvs; a name
// reported twice fails.
func carveLVs(t *testing.T, info *lvmtest.VG) map[string]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	names, err := lvmtest.CarveLVs(ctx, info.Runner, info.Name)
	if err != nil {
		t.Fatalf("lvs: %v", err)
	}
	lvs := map[string]int64{}
	for _, name := range names {
		if _, dup := lvs[name]; dup {
			t.Errorf("lvs: %s reported twice", name)
		}
		lvs[name] = 0
	}
	return lvs
}

// vgFree returns vg_free and vg_size in bytes, by vgs.
func vgFree(t *testing.T, info *lvmtest.VG) (free, size int64) {
	t.Helper()
	f := vgFigures(t, info)
	return f.FreeBytes, f.SizeBytes
}

func vgFigures(t *testing.T, info *lvmtest.VG) lvmtest.VGFigures {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f, err := lvmtest.VGReport(ctx, info.Runner, info.Name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func capacity(t *testing.T, ctrl csi.ControllerClient) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil {
		t.Fatalf("GetCapacity: %v", err)
	}
	return resp.GetAvailableCapacity()
}

func sameSet(t *testing.T, what string, got, want map[string]int64) {
	t.Helper()
	for id := range want {
		if _, ok := got[id]; !ok {
			t.Errorf("%s: %s missing", what, id)
		}
	}
	for id := range got {
		if _, ok := want[id]; !ok {
			t.Errorf("%s: unexpected %s", what, id)
		}
	}
}

func keys(m map[string]int64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
