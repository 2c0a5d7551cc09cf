package main

import (
	"errors"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	c, err := parseConfig("pid=42 kill=3\nwhen=after\n")
	if err != nil || c != (Config{PID: 42, Kill: 3, When: "after"}) {
		t.Fatalf("got %+v, %v", c, err)
	}
	if c, err := parseConfig(""); err != nil || c != (Config{When: "before"}) {
		t.Fatalf("empty: %+v, %v", c, err)
	}
	if c, err := parseConfig("kill=2 when=during delay=150"); err != nil || c.When != "during" || c.DelayMS != 150 {
		t.Fatalf("during: %+v, %v", c, err)
	}
	for _, bad := range []string{"pid", "pid=x", "kill=1 when=sometime", "delay=soon", "colour=red"} {
		if _, err := parseConfig(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestStripDir(t *testing.T) {
	if got := stripDir("/s:/usr/bin:/s/::/bin:/s", "/s"); got != "/usr/bin:/bin" {
		t.Fatalf("got %q", got)
	}
}

// rig is a shim directory with tool1 -> faultshim, and a directory with the
// real tool1, a script that records its arguments and PATH and exits 3.
type rig struct{ shim, real, record string }

func newRig(t *testing.T) *rig {
	t.Helper()
	if _, err := osexec.LookPath("go"); err != nil {
		t.Skip("needs the go tool to build the shim")
	}
	dir := t.TempDir()
	r := &rig{shim: filepath.Join(dir, "shim"), real: filepath.Join(dir, "real"), record: filepath.Join(dir, "record")}
	for _, d := range []string{r.shim, r.real} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(r.shim, "faultshim")
	if out, err := osexec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := os.Symlink("faultshim", filepath.Join(r.shim, "tool1")); err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\necho \"$0 $* PATH=$PATH\" >> " + r.record + "\nexit 3\n"
	if err := os.WriteFile(filepath.Join(r.real, "tool1"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return r
}

// parent runs a shell that writes fault.conf naming itself ("$$") plus conf,
// runs tool1 a, b, a nested tool1 from a child shell, then c, and prints
// "survived <last exit code>".
func (r *rig) parent(t *testing.T, conf string) (out string, killed bool) {
	t.Helper()
	sh := `echo "pid=$$ ` + conf + `" > ` + filepath.Join(r.shim, "fault.conf") + `
tool1 a; tool1 b; sh -c 'tool1 nested'; tool1 c; echo "survived $?"`
	cmd := osexec.Command("sh", "-c", sh)
	cmd.Env = []string{"PATH=" + r.shim + ":" + r.real + ":/usr/bin:/bin"}
	b, err := cmd.Output()
	var ee *osexec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return string(b), true
		}
	}
	if err != nil {
		t.Fatalf("parent shell: %v\n%s", err, b)
	}
	return string(b), false
}

func (r *rig) records(t *testing.T) []string {
	b, err := os.ReadFile(r.record)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || strings.Contains(l, r.shim) {
			t.Fatalf("real tool saw %q (want its name, one argument and a PATH without the shim dir)", l)
		}
		args = append(args, f[1])
	}
	return args
}

func (r *rig) calls(t *testing.T) []string {
	b, err := os.ReadFile(filepath.Join(r.shim, "calls.log"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func TestCountOnlyRunsEverythingAndPassesExitCode(t *testing.T) {
	r := newRig(t)
	out, killed := r.parent(t, "kill=0")
	if killed || out != "survived 3\n" {
		t.Fatalf("killed=%v out=%q", killed, out)
	}
	if got := strings.Join(r.records(t), ","); got != "a,b,nested,c" {
		t.Fatalf("real tool ran for %s", got)
	}
	// The nested call's parent is not the configured pid: not counted.
	if got := strings.Join(r.calls(t), "|"); got != "1 tool1 a|2 tool1 b|3 tool1 c" {
		t.Fatalf("calls.log: %s", got)
	}
}

func TestKillBeforeNthCall(t *testing.T) {
	r := newRig(t)
	out, killed := r.parent(t, "kill=2 when=before")
	if !killed || out != "" {
		t.Fatalf("killed=%v out=%q", killed, out)
	}
	if got := strings.Join(r.records(t), ","); got != "a" {
		t.Fatalf("real tool ran for %q, want only a (b was to be killed before running)", got)
	}
	if got := strings.Join(r.calls(t), "|"); got != "1 tool1 a|2 tool1 b !kill-before" {
		t.Fatalf("calls.log: %s", got)
	}
}

func TestKillAfterNthCall(t *testing.T) {
	r := newRig(t)
	out, killed := r.parent(t, "kill=2 when=after")
	if !killed || out != "" {
		t.Fatalf("killed=%v out=%q", killed, out)
	}
	if got := strings.Join(r.records(t), ","); got != "a,b" {
		t.Fatalf("real tool ran for %q, want a,b", got)
	}
	if got := strings.Join(r.calls(t), "|"); got != "1 tool1 a|2 tool1 b !kill-after" {
		t.Fatalf("calls.log: %s", got)
	}
}

func TestOtherParentNotCounted(t *testing.T) {
	r := newRig(t)
	// pid=1 is never the shell's pid: nothing is counted, nothing killed.
	if err := os.WriteFile(filepath.Join(r.shim, "fault.conf"), []byte("pid=1 kill=1"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := osexec.Command(filepath.Join(r.shim, "tool1"), "x")
	cmd.Env = []string{"PATH=" + r.shim + ":" + r.real}
	err := cmd.Run()
	var ee *osexec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("got %v, want the real tool's exit code 3", err)
	}
	if _, err := os.Stat(filepath.Join(r.shim, "calls.log")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("calls.log written for an uncounted call: %v", err)
	}
}

func TestKillDuringNthCall(t *testing.T) {
	r := newRig(t)
	// tool2's real version records that it started, then sleeps: the shim
	// kills it (and the parent) 200 ms in.
	script := "#!/bin/sh\necho \"tool2 started\" >> " + r.record + "\nsleep 30\necho \"tool2 finished\" >> " + r.record + "\n"
	if err := os.WriteFile(filepath.Join(r.real, "tool2"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("faultshim", filepath.Join(r.shim, "tool2")); err != nil {
		t.Fatal(err)
	}
	sh := `echo "pid=$$ kill=2 when=during delay=200" > ` + filepath.Join(r.shim, "fault.conf") + `
tool1 a; tool2 b; echo survived`
	cmd := osexec.Command("sh", "-c", sh)
	cmd.Env = []string{"PATH=" + r.shim + ":" + r.real + ":/usr/bin:/bin"}
	start := time.Now()
	out, err := cmd.Output()
	var ee *osexec.ExitError
	ws, _ := func() (syscall.WaitStatus, bool) {
		if errors.As(err, &ee) {
			w, ok := ee.Sys().(syscall.WaitStatus)
			return w, ok
		}
		return 0, false
	}()
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL || len(out) != 0 {
		t.Fatalf("parent: %v, out %q; want killed by SIGKILL", err, out)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("took %v: the tool was not killed", d)
	}
	b, _ := os.ReadFile(r.record)
	if got := string(b); !strings.Contains(got, "tool2 started") || strings.Contains(got, "tool2 finished") {
		t.Fatalf("record: %q", got)
	}
	if got := strings.Join(r.calls(t), "|"); got != "1 tool1 a|2 tool2 b !kill-during|2 !tool-killed" {
		t.Fatalf("calls.log: %s", got)
	}
}
