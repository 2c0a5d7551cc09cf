package disks

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/test/loopdev"
	"github.com/carve-csi/carve/test/lvmtest"
)

// killAt runs commands for real until the n-th (from 1), where the process
// "dies": in mode "before" that command never runs, in mode "after" it
// runs and its caller never learns the result. Every later command fails
// too (the process is gone).
type killAt struct {
	exec.Runner
	n, calls int
	after    bool
	mu       sync.Mutex
	log      []string
}

var errKilled = errors.New("killed by the fault test")

func (k *killAt) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	k.mu.Lock()
	k.calls++
	i := k.calls
	k.log = append(k.log, name+" "+strings.Join(args, " "))
	k.mu.Unlock()
	switch {
	case i < k.n:
		return k.Runner.Run(ctx, name, args...)
	case i == k.n && k.after:
		_, _ = k.Runner.Run(ctx, name, args...)
	}
	return nil, &exec.Error{Cmd: append([]string{name}, args...), ExitCode: -1, Err: errKilled}
}

// TestRealSetupKilled: a start killed before or after each tool call of
// building the volume group (lsblk, pvs, wipefs, pvcreate, vgcreate; then,
// with the VG there, of adding a disk: pvcreate, vgextend) and then started
// again ends exactly as an uninterrupted start: the VG of carve's tag on
// every blank disk, the disk with a filesystem untouched, no orphan PV.
func TestRealSetupKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("about a minute of real lvm2")
	}
	a, b, c := loopdev.New(t, 64<<20), loopdev.New(t, 64<<20), loopdev.New(t, 64<<20)
	dir := t.TempDir()
	if err := (lvmtest.Config{Devices: []string{a, b, c}}).Write(dir); err != nil {
		t.Fatal(err)
	}
	runner := &exec.Host{Env: lvmtest.Env(dir)}
	ctx := context.Background()
	lvm := func(args ...string) string {
		out, err := runner.Run(ctx, "lvm", args...)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	reset := func() {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		_, _ = runner.Run(cctx, "lvm", "vgremove", "-f", testVG)
		_, _ = runner.Run(cctx, "lvm", "pvremove", "-y", "-ff", a, b, c)
		_, _ = runner.Run(cctx, "wipefs", "-a", a, b, c)
		if _, err := runner.Run(cctx, "mkfs.ext4", "-q", "-F", c); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(reset)
	patterns := []string{a, b, c}
	want := []string{a, b}
	// check: the state an uninterrupted start leaves.
	check := func(what string, res Result) {
		t.Helper()
		if !reflect.DeepEqual(res.Members, want) {
			t.Errorf("%s: members %q, want %q", what, res.Members, want)
		}
		pvs := lvm("pvs", "--noheadings", "-o", "pv_name,vg_name,vg_tags")
		for _, d := range want {
			if !strings.Contains(pvs, d+" "+testVG) && !regexpLine(pvs, d, testVG) {
				t.Errorf("%s: %s not a PV of %s: %s", what, d, testVG, pvs)
			}
		}
		if strings.Contains(pvs, c) || !strings.Contains(pvs, "carve.owner="+testOwner) {
			t.Errorf("%s: pvs %s: want %s untouched and the VG tagged", what, pvs, c)
		}
		if sigs, err := signatures(ctx, runner, c); err != nil || !strings.Contains(sigs, "ext4") {
			t.Errorf("%s: %s lost its filesystem: %q, %v", what, c, sigs, err)
		}
	}
	trials := 0
	for _, phase := range []struct {
		name    string
		prepare func() // the state before the killed start
	}{
		{"create", func() {}},
		{"extend", func() { // a VG on a alone: the killed start adds b
			if _, err := Setup(ctx, runner, Options{VG: testVG, Owner: testOwner, Patterns: []string{a, c}}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		// How many tool calls an uninterrupted start makes.
		reset()
		phase.prepare()
		count := &killAt{Runner: runner, n: 1 << 30}
		res, err := Setup(ctx, count, Options{VG: testVG, Owner: testOwner, Patterns: patterns})
		if err != nil {
			t.Fatal(err)
		}
		check(phase.name+", uninterrupted", res)
		t.Logf("%s: an uninterrupted start runs %d tools: %q", phase.name, count.calls, count.log)
		for n := 1; n <= count.calls; n++ {
			for _, after := range []bool{false, true} {
				what := fmt.Sprintf("%s, killed %s call %d (%s)", phase.name, map[bool]string{false: "before", true: "after"}[after], n, count.log[n-1])
				reset()
				phase.prepare()
				k := &killAt{Runner: runner, n: n, after: after}
				if _, err := Setup(ctx, k, Options{VG: testVG, Owner: testOwner, Patterns: patterns}); !errors.Is(err, errKilled) {
					t.Fatalf("%s: Setup returned %v, want the kill", what, err)
				}
				res, err := Setup(ctx, runner, Options{VG: testVG, Owner: testOwner, Patterns: patterns})
				if err != nil {
					t.Errorf("%s: the restart failed: %v", what, err)
					continue
				}
				check(what, res)
				trials++
			}
		}
	}
	t.Logf("setup faults: %d trials, %d failed", trials, map[bool]int{false: 0, true: 1}[t.Failed()])
}

// regexpLine reports whether pvs has a line naming dev then vg, however spaced.
func regexpLine(pvs, dev, vg string) bool {
	for _, l := range strings.Split(pvs, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == dev && f[1] == vg {
			return true
		}
	}
	return false
}
