// Package driver starts a carve-csi binary as a separate process for tests
// that talk to it over its Unix socket, as kubelet and the sidecars do.
package driver

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	built     string
	buildErr  error
)

// Binary returns the carve-csi binary to test: $CARVE_BINARY, or one built
// once per test process from this checkout into _output/test (not a temp dir:
// nothing could remove that when the process ends, and go test runs one process
// per package). Each process builds to its own file and renames it into place,
// so parallel packages never see a half-written binary.
func Binary(t testing.TB) string {
	t.Helper()
	if b := os.Getenv("CARVE_BINARY"); b != "" {
		return b
	}
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		dir := filepath.Join(root, "_output", "test")
		if buildErr = os.MkdirAll(dir, 0o755); buildErr != nil {
			return
		}
		tmp := filepath.Join(dir, fmt.Sprintf(".carve-csi.%d", os.Getpid()))
		cmd := exec.Command("go", "build", "-o", tmp, "./cmd/carve-csi")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			os.Remove(tmp)
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
			return
		}
		built = filepath.Join(dir, "carve-csi")
		buildErr = os.Rename(tmp, built)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

// Process is a running carve-csi.
type Process struct {
	Socket string
	Log    string
	cmd    *exec.Cmd
	done   chan error
}

// Start runs carve-csi with args plus --endpoint on a fresh socket, waits until
// the socket accepts connections, and stops the process when the test ends.
func Start(t testing.TB, env []string, args ...string) *Process {
	t.Helper()
	dir := t.TempDir()
	p := &Process{Socket: filepath.Join(dir, "csi.sock"), Log: filepath.Join(dir, "carve-csi.log")}
	logFile, err := os.Create(p.Log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(Binary(t), append([]string{"--endpoint=unix://" + p.Socket}, args...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.done = make(chan error, 1)
	go func() { p.done <- p.cmd.Wait(); logFile.Close() }()
	t.Cleanup(func() {
		p.Stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("carve-csi log:\n%s", p.Tail(60))
		}
	})
	wait := startTimeout()
	deadline := time.Now().Add(wait)
	for {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("carve-csi exited at start-up: %v\n%s", err, p.Tail(30))
		default:
		}
		if c, err := net.Dial("unix", p.Socket); err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("carve-csi did not listen on %s within %v\n%s", p.Socket, wait, p.Tail(30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// PID is the process id (for /proc measurements).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Stop sends sig (SIGKILL to simulate a crash) and waits for the exit.
func (p *Process) Stop(sig syscall.Signal) {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	select {
	case err := <-p.done:
		p.done <- err
	case <-ctx.Done():
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Tail returns the last n lines of the process log.
func (p *Process) Tail(n int) string {
	b, _ := os.ReadFile(p.Log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// startTimeout bounds the wait for the socket: $CARVE_DRIVER_START_TIMEOUT,
// else 30 s, or 120 s in the emulated VM (CARVE_VM=1), where a busy host makes
// start-up slow.
func startTimeout() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("CARVE_DRIVER_START_TIMEOUT")); err == nil && d > 0 {
		return d
	}
	if os.Getenv("CARVE_VM") == "1" {
		return 2 * time.Minute
	}
	return 30 * time.Second
}
