// Package hung proves at the gRPC level that a tool which never returns cannot
// wedge carve-csi: the real binary runs with a fake `lvm` first on its PATH
// that, for the LV named in a marker file, starts a helper and sleeps for an
// hour instead of running lvcreate (every other call runs the real lvm2 on a
// metadata-only test VG). The hung CreateVolume must end with the code of its
// context (DeadlineExceeded, or Canceled when the caller gives up), the tool
// and its helper must be killed, other volumes and Probe/GetCapacity must be
// served meanwhile, and the next CreateVolume of the same name must work.
package hung

import (
	"bufio"
	"context"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
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

// fakeLVM hangs lvcreate of the LV named in %[1]s/hang (its third argument:
// lvcreate -n <id> ...); %[2]s is the real lvm. The helper stands for what a
// tool may spawn: only a process-group kill ends it. PID files are written
// through a rename so that the test never reads half a number.
const fakeLVM = `#!/bin/sh
if [ "$1" = lvcreate ] && [ -f %[1]s/hang ] && [ "$3" = "$(cat %[1]s/hang)" ]; then
	sleep 3600 &
	echo $! > %[1]s/helper.tmp && mv %[1]s/helper.tmp %[1]s/helper.pid
	echo $$ > %[1]s/tool.tmp && mv %[1]s/tool.tmp %[1]s/tool.pid
	exec sleep 3600
fi
exec %[2]s "$@"
`

// Generous bounds for a loaded machine; they only keep a broken driver from
// hanging the test for an hour, and the measured times are logged.
const (
	hangDeadline = 2 * time.Second
	callTimeout  = time.Minute
	waitBound    = time.Minute
)

type rig struct {
	t    *testing.T
	dir  string // the fake's marker and PID files
	vg   *lvmtest.VG
	proc *driver.Process
	ids  csi.IdentityClient
	ctrl csi.ControllerClient
}

func newRig(t *testing.T) *rig {
	info := lvmtest.NewVGInfo(t, 1<<30, "")
	realLVM, err := osexec.LookPath("lvm")
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, dir: t.TempDir(), vg: info}
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "lvm"), []byte(fmt.Sprintf(fakeLVM, r.dir, realLVM)), 0o755); err != nil {
		t.Fatal(err)
	}
	// pkg/exec passes PATH through to the tools, so the fake comes first.
	env := append(lvmtest.Env(info.ConfigDir), "PATH="+bin+":"+os.Getenv("PATH"))
	r.proc = driver.Start(t, env, "--mode=node", "--nodeid=hung", "--pool=default=lvm:"+info.Name,
		"--kubelet-dir="+t.TempDir(), "--standalone", "--v=2")
	conn, err := grpc.NewClient("unix://"+r.proc.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r.ids, r.ctrl = csi.NewIdentityClient(conn), csi.NewControllerClient(conn)
	t.Cleanup(r.killLeftovers)
	return r
}

// hang makes lvcreate of the volume called name hang from now on.
func (r *rig) hang(name string) {
	r.t.Helper()
	for _, f := range []string{"tool.pid", "helper.pid"} {
		_ = os.Remove(filepath.Join(r.dir, f))
	}
	if err := os.WriteFile(filepath.Join(r.dir, "hang"), []byte(names.VolumeID(name)+"\n"), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) unhang() {
	if err := os.Remove(filepath.Join(r.dir, "hang")); err != nil {
		r.t.Fatal(err)
	}
}

// killLeftovers ends sleepers a failed test may have left (they are ours: the
// fake wrote their PIDs), so that a failure never leaves hour-long processes.
func (r *rig) killLeftovers() {
	for _, f := range []string{"tool.pid", "helper.pid"} {
		if pid := readPID(filepath.Join(r.dir, f)); pid > 0 && alive(pid) {
			r.t.Logf("killing leftover %s %d", f, pid)
			_ = syscallKill(pid)
		}
	}
}

// waitHung waits until the fake's sleeper is running and returns its PIDs.
func (r *rig) waitHung() (tool, helper int) {
	r.t.Helper()
	deadline := time.Now().Add(waitBound)
	for time.Now().Before(deadline) {
		tool, helper = readPID(filepath.Join(r.dir, "tool.pid")), readPID(filepath.Join(r.dir, "helper.pid"))
		if tool > 0 && helper > 0 {
			return tool, helper
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatalf("the fake lvcreate did not start within %v", waitBound)
	return 0, 0
}

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// alive reports whether pid is a running sleep (a zombie awaiting its reaper
// counts as dead: it was killed; a reused PID running something else too).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	// /proc/<pid>/stat: "pid (comm) state ...".
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) || !strings.Contains(s[:i], "(sleep") {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// waitDead waits until none of pids is alive and returns how long that took.
func (r *rig) waitDead(what string, pids ...int) time.Duration {
	r.t.Helper()
	start := time.Now()
	for {
		left := 0
		for _, p := range pids {
			if alive(p) {
				left++
			}
		}
		if left == 0 {
			return time.Since(start)
		}
		if time.Since(start) > waitBound {
			r.t.Fatalf("%s: processes %v still alive %v after the call ended", what, pids, waitBound)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var mountCaps = []*csi.VolumeCapability{{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}}

func (r *rig) create(ctx context.Context, name string) (*csi.CreateVolumeResponse, error) {
	return r.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: mountCaps,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}})
}

func (r *rig) mustCreate(name string) string {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	resp, err := r.create(ctx, name)
	if err != nil {
		r.t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.GetVolume().GetVolumeId()
}

func (r *rig) mustDelete(id string) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if _, err := r.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		r.t.Fatalf("DeleteVolume %s: %v", id, err)
	}
}

func (r *rig) carveLVs() []string {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	lvs, err := lvmtest.CarveLVs(ctx, r.vg.Runner, r.vg.Name)
	if err != nil {
		r.t.Fatalf("lvs: %v", err)
	}
	return lvs
}

// serverCode waits for the driver's log line for the n-th failed call of
// method (the gRPC layer logs every failure with its code) and returns that
// code: the client sees its own deadline or cancellation whatever the server
// answers, so only the log shows what carve returned.
func (r *rig) serverCode(method string, n int) string {
	r.t.Helper()
	re := regexp.MustCompile(`"GRPC call failed".* method="` + regexp.QuoteMeta(method) + `".* code="([A-Za-z]+)"`)
	deadline := time.Now().Add(waitBound)
	for time.Now().Before(deadline) {
		var codes []string
		f, err := os.Open(r.proc.Log)
		if err != nil {
			r.t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				codes = append(codes, m[1])
			}
		}
		f.Close()
		if len(codes) >= n {
			return codes[n-1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatalf("no log line for failed %s call #%d within %v:\n%s", method, n, waitBound, r.proc.Tail(20))
	return ""
}

func TestHungTool(t *testing.T) {
	r := newRig(t)
	const (
		hungName  = "pvc-hung-a"
		otherName = "pvc-hung-b"
		create    = "/csi.v1.Controller/CreateVolume"
	)

	// 1. The caller gives up (cancels) while lvcreate hangs; meanwhile the
	// driver serves Probe, GetCapacity and another volume's create and delete.
	r.hang(hungName)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := r.create(ctx, hungName); errc <- err }()
	tool, helper := r.waitHung()
	func() {
		cctx, ccancel := context.WithTimeout(context.Background(), callTimeout)
		defer ccancel()
		if _, err := r.ids.Probe(cctx, &csi.ProbeRequest{}); err != nil {
			t.Errorf("Probe while a CreateVolume hangs: %v", err)
		}
		if _, err := r.ctrl.GetCapacity(cctx, &csi.GetCapacityRequest{}); err != nil {
			t.Errorf("GetCapacity while a CreateVolume hangs: %v", err)
		}
	}()
	other := r.mustCreate(otherName)
	if got := r.carveLVs(); len(got) != 1 || got[0] != other {
		t.Errorf("carve LVs while %s hangs: %v, want only %s", hungName, got, other)
	}
	r.mustDelete(other)
	if !alive(tool) || !alive(helper) {
		t.Fatalf("the fake lvcreate (%d, helper %d) ended before the caller gave up", tool, helper)
	}
	cancel()
	t0 := time.Now()
	err := <-errc
	if status.Code(err) != codes.Canceled {
		t.Errorf("canceled CreateVolume: client got %v, want Canceled", err)
	}
	if c := r.serverCode(create, 1); c != codes.Canceled.String() {
		t.Errorf("canceled CreateVolume: carve answered %s, want Canceled", c)
	}
	killed := r.waitDead("after the cancel", tool, helper)
	t.Logf("cancel: tool %d and its helper %d gone %v after the cancel (%v after the server answered)",
		tool, helper, time.Since(t0).Round(time.Millisecond), killed.Round(time.Millisecond))

	// 2. The call's deadline ends while lvcreate hangs.
	r.hang(hungName)
	dctx, dcancel := context.WithTimeout(context.Background(), hangDeadline)
	t0 = time.Now()
	go func() { _, err := r.create(dctx, hungName); errc <- err }()
	tool, helper = r.waitHung()
	err = <-errc
	dcancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("CreateVolume with a %v deadline: client got %v, want DeadlineExceeded", hangDeadline, err)
	}
	code := r.serverCode(create, 2)
	if code != codes.DeadlineExceeded.String() {
		t.Errorf("CreateVolume with a %v deadline: carve answered %s, want DeadlineExceeded", hangDeadline, code)
	}
	answered := time.Since(t0)
	killed = r.waitDead("after the deadline", tool, helper)
	if got := r.carveLVs(); len(got) != 0 {
		t.Errorf("carve LVs after the hung create: %v, want none", got)
	}

	// 3. The tool works again: the same name is created and deleted.
	r.unhang()
	t1 := time.Now()
	id := r.mustCreate(hungName)
	next := time.Since(t1)
	if want := names.VolumeID(hungName); id != want {
		t.Errorf("CreateVolume %s after the hang: id %q, want %q", hungName, id, want)
	}
	if got := r.carveLVs(); len(got) != 1 || got[0] != id {
		t.Errorf("carve LVs after the retry: %v, want only %s", got, id)
	}
	r.mustDelete(id)
	if got := r.carveLVs(); len(got) != 0 {
		t.Errorf("carve LVs after DeleteVolume: %v, want none", got)
	}
	fmt.Printf("hung tool: CreateVolume with a %v deadline -> client %v, carve %s; tool %d and helper %d killed "+
		"(gone %v after the server answered, %v after the call began); Probe, GetCapacity and another volume served during the hang; "+
		"a cancel -> Canceled; next CreateVolume OK in %v, DeleteVolume OK, VG clean\n",
		hangDeadline, status.Code(err), code, tool, helper, killed.Round(time.Millisecond), answered.Round(time.Millisecond),
		next.Round(time.Millisecond))
}

func syscallKill(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
