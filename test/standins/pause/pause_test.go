package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the pause program when this variable is set.
func TestMain(m *testing.M) {
	if os.Getenv("CARVE_PAUSE_CHILD") == "1" {
		main()
		os.Exit(3) // main returns only for -v
	}
	os.Exit(m.Run())
}

// status reads one field of /proc/PID/status ("" when the process is gone).
func status(pid int, field string) string {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// children lists the host PIDs whose parent is pid.
func children(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err == nil && status(c, "PPid") == strconv.Itoa(pid) {
			out = append(out, c)
		}
	}
	return out
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

// pause as PID 1 of a new PID namespace inherits an orphan, reaps it when it exits, and exits 0
// on SIGTERM.
func TestPauseReapsAndStops(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a new PID namespace)")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("needs nsenter (util-linux)")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CARVE_PAUSE_CHILD=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start a process in a new PID namespace: %v", err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// Ready once SIGTERM (signal 15, bit 14) is caught.
	waitFor(t, "pause to install its signal handlers", 10*time.Second, func() bool {
		m, err := strconv.ParseUint(status(pid, "SigCgt"), 16, 64)
		return err == nil && m&(1<<14) != 0
	})

	// sh exits at once; its sleep is orphaned inside the namespace and re-parented to pause.
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-p", "--", "sh", "-c", "sleep 2 </dev/null >/dev/null 2>&1 & exit 0").CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v: %s", err, out)
	}
	waitFor(t, "the orphan to be re-parented to pause", 5*time.Second, func() bool { return len(children(pid)) == 1 })
	waitFor(t, "pause to reap the orphan after it exits", 10*time.Second, func() bool { return len(children(pid)) == 0 })

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("pause after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pause did not exit within 10 s of SIGTERM")
	}
}
