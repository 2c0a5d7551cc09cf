package lvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/lvmtest"
)

// TestReal runs the backend against real lvm2 metadata on a loop device (one
// loop device for the whole test; the steps depend on each other). It skips
// when not root, lvm2 is missing or no loop device is free.
func TestReal(t *testing.T) {
	vg, runner := lvmtest.NewVG(t, 2<<30)
	ctx := context.Background()
	const owner = "carve.csi.dev"

	lvm := func(args ...string) ([]byte, error) { return runner.Run(ctx, "lvm", args...) }
	// Independent views of the VG, not through the backend.
	vgFree := func() int64 {
		t.Helper()
		out, err := lvm("vgs", "-o", "vg_free", "--reportformat", "json", "--units", "b", "--nosuffix", vg)
		if err != nil {
			t.Fatal(err)
		}
		var rep struct {
			Report []struct {
				VG []struct {
					Free string `json:"vg_free"`
				} `json:"vg"`
			} `json:"report"`
		}
		if err := json.Unmarshal(out, &rep); err != nil || len(rep.Report) != 1 || len(rep.Report[0].VG) != 1 {
			t.Fatalf("vgs: %v: %s", err, out)
		}
		n, err := strconv.ParseInt(rep.Report[0].VG[0].Free, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	lvNames := func() map[string]string {
		t.Helper()
		lvs, err := lvmtest.LVs(ctx, runner, vg)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, lv := range lvs {
			m[lv.Name] = lv.Tags
		}
		return m
	}

	if _, err := New(ctx, runner, "p", vg+"missing", owner); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("New on a missing VG: %v", err)
	}
	b, err := New(ctx, runner, "fast", vg, owner)
	if err != nil {
		t.Fatal(err)
	}
	ext := b.AlignBytes()
	c0, err := b.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c0.AlignBytes != ext || c0.FreeBytes != c0.TotalBytes || c0.MaxVolumeBytes != c0.FreeBytes || c0.FreeBytes%ext != 0 {
		t.Fatalf("capacity of an empty VG: %+v (extent %d)", c0, ext)
	}
	free := c0.FreeBytes // what the arithmetic says is free
	checkCapacity := func(step string) {
		t.Helper()
		c, err := b.Capacity(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := vgFree(); c.FreeBytes != got || c.FreeBytes != free || c.MaxVolumeBytes != free || c.TotalBytes != c0.TotalBytes {
			t.Fatalf("after %s: capacity %+v, vgs vg_free %d, expected free %d", step, c, got, free)
		}
	}

	nameA := "pvc-a/odd name ü=&,{}"
	idA := names.VolumeID(nameA)
	volA, err := b.Create(ctx, backend.CreateRequest{ID: idA, Name: nameA, SizeBytes: 100<<20 + 1})
	if err != nil {
		t.Fatal(err)
	}
	if volA.SizeBytes != 104<<20 || volA.DevicePath != "/dev/"+vg+"/"+idA {
		t.Fatalf("created %+v", volA)
	}
	free -= volA.SizeBytes
	checkCapacity("create")
	if got, err := b.Get(ctx, idA); err != nil || *got != *volA {
		t.Fatalf("Get = %+v, %v; want %+v", got, err, volA)
	}

	// Same id again: ErrExists, nothing changes.
	_, err = b.Create(ctx, backend.CreateRequest{ID: idA, Name: nameA, SizeBytes: 100 << 20})
	if !errors.Is(err, backend.ErrExists) {
		t.Fatalf("re-create: %v", err)
	}
	if got, err := b.Get(ctx, idA); err != nil || *got != *volA {
		t.Fatalf("after re-create: %+v, %v", got, err)
	}
	checkCapacity("re-create")

	// Inline ephemeral volume with a target path long enough to need chunked tags.
	nameB := "csi-0123456789abcdef0123456789abcdef"
	idB := names.VolumeID(nameB)
	target := "/var/lib/kubelet/pods/0f3c9a52-7f0e-4d8e-9d2a-3b5a6c7d8e9f/volumes/kubernetes.io~csi/"
	for len(target) < 1500 {
		target += "nested-dir-é/"
	}
	target += "mount"
	volB, err := b.Create(ctx, backend.CreateRequest{ID: idB, Name: nameB, SizeBytes: 8 << 20, Ephemeral: true, TargetPath: target})
	if err != nil {
		t.Fatal(err)
	}
	free -= volB.SizeBytes
	checkCapacity("create ephemeral")
	if got, err := b.Get(ctx, idB); err != nil || *got != *volB {
		t.Fatalf("Get = %+v, %v; want %+v", got, err, volB)
	}

	// Foreign LVs: one plain, one carve-shaped with odd tags ('/', '=', ...),
	// one carve-shaped owned by another driver. None is listed or touchable.
	foreign := names.VolumeID("foreign")
	other := names.VolumeID("other")
	for _, args := range [][]string{
		{"lvcreate", "-n", "plain", "-L", "104857600b", "-W", "y", "-y", vg},
		{"lvcreate", "-n", foreign, "-L", "8388608b", "-W", "y", "-y", "--addtag", "a/b=c:d&e#f!g+h", "--addtag", "carve.name=Zm9yZWlnbg", vg},
		{"lvcreate", "-n", other, "-L", "8388608b", "-W", "y", "-y", "--addtag", "carve.owner=other.csi.dev", vg},
	} {
		if _, err := lvm(args...); err != nil {
			t.Fatal(err)
		}
	}
	free -= 116 << 20
	checkCapacity("foreign creates")
	if tags := lvNames()[foreign]; tags != "a/b=c:d&e#f!g+h,carve.name=Zm9yZWlnbg" {
		t.Fatalf("tags with '/' and '=' came back as %q", tags)
	}
	vols, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 2 || vols[0] != *volB || vols[1] != *volA {
		t.Fatalf("List = %+v", vols)
	}
	for _, id := range []string{foreign, other} {
		if _, err := b.Get(ctx, id); !errors.Is(err, backend.ErrNotOwned) {
			t.Fatalf("Get(%s): %v", id, err)
		}
		if err := b.Delete(ctx, id); !errors.Is(err, backend.ErrNotOwned) {
			t.Fatalf("Delete(%s): %v", id, err)
		}
		if _, err := b.Expand(ctx, id, 1<<30); !errors.Is(err, backend.ErrNotOwned) {
			t.Fatalf("Expand(%s): %v", id, err)
		}
		if _, err := b.Activate(ctx, id); !errors.Is(err, backend.ErrNotOwned) {
			t.Fatalf("Activate(%s): %v", id, err)
		}
		if _, ok := lvNames()[id]; !ok {
			t.Fatalf("foreign LV %s is gone", id)
		}
	}
	checkCapacity("refusals")

	// Expand, and expand to a size it already has.
	volA, err = b.Expand(ctx, idA, 200<<20)
	if err != nil || volA.SizeBytes != 200<<20 {
		t.Fatalf("Expand = %+v, %v", volA, err)
	}
	free -= 96 << 20
	checkCapacity("expand")
	if got, err := b.Get(ctx, idA); err != nil || got.SizeBytes != 200<<20 || got.Name != nameA {
		t.Fatalf("after expand: %+v, %v", got, err)
	}
	if v, err := b.Expand(ctx, idA, 150<<20); err != nil || v.SizeBytes != 200<<20 {
		t.Fatalf("no-op Expand = %+v, %v", v, err)
	}
	checkCapacity("no-op expand")
	if _, err := b.Expand(ctx, idA, 200<<20+free+ext); !errors.Is(err, backend.ErrNoSpace) {
		t.Fatalf("Expand beyond free: %v", err)
	}
	checkCapacity("failed expand")

	// Full: one extent more than free fails with ErrNoSpace and leaves nothing.
	idFull := names.VolumeID("pvc-full")
	_, err = b.Create(ctx, backend.CreateRequest{ID: idFull, Name: "pvc-full", SizeBytes: free + ext})
	if !errors.Is(err, backend.ErrNoSpace) {
		t.Fatalf("create beyond free: %v", err)
	}
	if _, ok := lvNames()[idFull]; ok {
		t.Fatal("failed create left an LV")
	}
	checkCapacity("failed create")
	// Exactly MaxVolumeBytes fits and leaves the VG full.
	volFull, err := b.Create(ctx, backend.CreateRequest{ID: idFull, Name: "pvc-full", SizeBytes: free})
	if err != nil {
		t.Fatal(err)
	}
	free = 0
	checkCapacity("create to full")
	if _, err := b.Create(ctx, backend.CreateRequest{ID: names.VolumeID("one-more"), Name: "one-more", SizeBytes: ext}); !errors.Is(err, backend.ErrNoSpace) {
		t.Fatalf("create in a full VG: %v", err)
	}
	if err := b.Delete(ctx, idFull); err != nil {
		t.Fatal(err)
	}
	free = volFull.SizeBytes
	checkCapacity("delete full")

	// Activation is off in the test VG: lvchange -ay succeeds, no device appears.
	if _, err := b.Activate(ctx, idA); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("Activate without device-mapper: %v", err)
	}

	// Delete, delete again.
	if err := b.Delete(ctx, idA); err != nil {
		t.Fatal(err)
	}
	free += volA.SizeBytes
	checkCapacity("delete")
	if err := b.Delete(ctx, idA); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := b.Get(ctx, idA); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Get after delete: %v", err)
	}
	if _, err := b.Expand(ctx, idA, 1<<30); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Expand after delete: %v", err)
	}

	// lvcreate that really created the LV but is reported as failed (as when
	// the context kills it after the metadata commit): nothing is left.
	idK := names.VolumeID("pvc-killed")
	b.runner = &failAfter{r: runner, sub: "lvcreate"}
	_, err = b.Create(ctx, backend.CreateRequest{ID: idK, Name: "pvc-killed", SizeBytes: 8 << 20})
	b.runner = runner
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("create with injected failure: %v", err)
	}
	if _, ok := lvNames()[idK]; ok {
		t.Fatal("half-made LV left behind")
	}
	checkCapacity("half-made cleanup")

	// Real kills at different moments of lvcreate: whatever happens, either
	// the volume exists (success) or nothing is left.
	for i, d := range []time.Duration{0, 5 * time.Millisecond, 15 * time.Millisecond, 25 * time.Millisecond, 35 * time.Millisecond, 50 * time.Millisecond, 80 * time.Millisecond} {
		id := names.VolumeID("pvc-kill-" + strconv.Itoa(i))
		kctx, cancel := context.WithTimeout(ctx, d)
		v, err := b.Create(kctx, backend.CreateRequest{ID: id, Name: "k", SizeBytes: 4 << 20})
		cancel()
		_, exists := lvNames()[id]
		t.Logf("kill after %v: err=%v exists=%v", d, err, exists)
		switch {
		case err == nil && !exists, err != nil && exists:
			t.Fatalf("kill after %v: err %v but LV exists=%v", d, err, exists)
		case err == nil:
			if err := b.Delete(ctx, v.ID); err != nil {
				t.Fatal(err)
			}
		}
		checkCapacity("killed create")
	}

	// Finally only foreign LVs and B remain; B goes, foreign ones stay.
	if err := b.Delete(ctx, idB); err != nil {
		t.Fatal(err)
	}
	free += volB.SizeBytes
	checkCapacity("delete ephemeral")
	if vols, err := b.List(ctx); err != nil || len(vols) != 0 {
		t.Fatalf("List = %+v, %v", vols, err)
	}
	if n := lvNames(); len(n) != 3 {
		t.Fatalf("LVs left: %v, want the 3 foreign ones", n)
	}
}

// failAfter runs commands for real but reports the one whose subcommand is
// sub as failed (context deadline), after it really ran.
type failAfter struct {
	r   exec.Runner
	sub string
}

func (f *failAfter) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := f.r.Run(ctx, name, args...)
	if err == nil && len(args) > 0 && args[0] == f.sub {
		return out, &exec.Error{Cmd: append([]string{name}, args...), ExitCode: -1, Err: context.DeadlineExceeded}
	}
	return out, err
}

// TestRealArchiveAdvice: with archiving on, more than 8192 files in the
// archive and the VG's backup removed, lvm2 2.03 prints "Consider pruning ...
// VG archive ..." inside the vgs JSON report (lvmteam/lvm2#137). Start-up
// (New) and Capacity read through it.
func TestRealArchiveAdvice(t *testing.T) {
	v := lvmtest.NewVGInfo(t, 256<<20, "")
	archive, backup := v.EnableArchive(t)
	for i := 0; i < 9000; i++ {
		if err := os.WriteFile(filepath.Join(archive, fmt.Sprintf("%s_%05d-1.vg", v.Name, i)), []byte("#\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	seen := &sawAdvice{r: v.Runner}
	for _, step := range []string{"New", "Capacity"} {
		if err := os.Remove(filepath.Join(backup, v.Name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		b, err := New(ctx, seen, "p", v.Name, "carve.csi.dev")
		if step == "Capacity" && err == nil {
			_, err = b.Capacity(ctx)
		}
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	if seen.n == 0 {
		t.Skip("this lvm2 printed no archive advice; nothing to check")
	}
}

type sawAdvice struct {
	r exec.Runner
	n int
}

func (s *sawAdvice) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := s.r.Run(ctx, name, args...)
	if strings.Contains(string(out), "Consider pruning") {
		s.n++
	}
	return out, err
}

// TestRealMissingPV: a VG over two loop devices, one of which lvm stops
// seeing. The pool is degraded in Capacity (no free space offered), creating
// and expanding fail with ErrDegraded, the LV on the lost PV reports its
// condition, deleting it works.
func TestRealMissingPV(t *testing.T) {
	m := lvmtest.NewMultiVG(t, 2, 128<<20, "")
	if m.Name == "" {
		t.Fatal("no VG name")
	}
	ctx := context.Background()
	b, err := New(ctx, m.Runner, "p", m.Name, "carve.csi.dev")
	if err != nil {
		t.Fatal(err)
	}
	kept, lost := names.VolumeID("pvc-kept"), names.VolumeID("pvc-lost")
	for i, id := range []string{kept, lost} {
		args := []string{"lvcreate", "-n", id, "-L", "32m", "-W", "y", "-y"}
		for _, tag := range Tags(b.OwnerTag(), "pvc-"+id, false, "") {
			args = append(args, "--addtag", tag)
		}
		if _, err := m.Runner.Run(ctx, "lvm", append(args, m.Name, m.LoopDevs[i])...); err != nil {
			t.Fatal(err)
		}
	}
	if c, err := b.Capacity(ctx); err != nil || c.FreeBytes == 0 {
		t.Fatalf("healthy Capacity = %+v, %v", c, err)
	}
	m.HideDevice(t, m.LoopDevs[1])
	c, err := b.Capacity(ctx)
	if !errors.Is(err, backend.ErrDegraded) || c.FreeBytes != 0 || c.MaxVolumeBytes != 0 {
		t.Errorf("Capacity = %+v, %v: want degraded with no space", c, err)
	}
	if _, err := b.Create(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-new"), Name: "pvc-new", SizeBytes: 4 << 20}); !errors.Is(err, backend.ErrDegraded) {
		t.Errorf("Create: %v", err)
	}
	if _, err := b.Expand(ctx, kept, 64<<20); !errors.Is(err, backend.ErrDegraded) {
		t.Errorf("Expand: %v", err)
	}
	if v, err := b.Get(ctx, lost); err != nil || v.Condition == "" {
		t.Errorf("Get(lost) = %+v, %v: want a condition", v, err)
	}
	if v, err := b.Get(ctx, kept); err != nil || v.Condition != "" {
		t.Errorf("Get(kept) = %+v, %v: want none", v, err)
	}
	if err := b.Delete(ctx, lost); err != nil {
		t.Errorf("Delete(lost): %v", err)
	}
}
