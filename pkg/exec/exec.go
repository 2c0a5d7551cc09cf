// Package exec runs external tools (lvm2, ndctl) the one way carve allows:
// with a context, without a shell, with LC_ALL=C and stdin closed, and with
// errors that carry the command line, exit code and stderr.
package exec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// Runner runs one command and returns its stdout.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Error is returned when a command cannot start or exits non-zero.
type Error struct {
	Cmd      []string // full command line, prefix included
	ExitCode int      // -1 when the process did not exit normally
	Stderr   string
	Err      error // underlying error (exit status, context error, start failure)
}

func (e *Error) Error() string {
	// One line: tools print several, and errors end up in one-line logs and events.
	var lines []string
	for _, l := range strings.Split(e.Stderr, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	msg := strings.Join(lines, "; ")
	switch {
	case msg == "":
		msg = e.Err.Error()
	case e.ExitCode == -1: // killed or never started: the cause matters more than stray stderr
		msg = e.Err.Error() + ": " + msg
	}
	return fmt.Sprintf("%s: exit code %d: %s", strings.Join(e.Cmd, " "), e.ExitCode, msg)
}

func (e *Error) Unwrap() error { return e.Err }

// ExitCode returns the exit code carried by err, or -1 when err is not an *Error.
func ExitCode(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.ExitCode
	}
	return -1
}

// Stderr returns the stderr carried by err, or "".
func Stderr(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Stderr
	}
	return ""
}

// Host runs commands on this machine, optionally behind a prefix such as
// "nsenter -t 1 -m -u -i -n -p" so that a containerized driver uses the host's tools.
type Host struct {
	Prefix []string
	// Env is appended to the minimal environment; LC_ALL=C always wins.
	Env []string
	// WaitDelay bounds how long Run waits for output pipes after the context
	// ends and the child is killed.
	WaitDelay time.Duration
}

var _ Runner = (*Host)(nil)

// Run implements Runner.
func (h *Host) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	argv := append(append(append([]string{}, h.Prefix...), name), args...)
	cmd := osexec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(baseEnv(), h.Env...)
	cmd.Env = append(cmd.Env, "LC_ALL=C")
	cmd.Stdin = nil // os/exec connects /dev/null: a prompting tool fails instead of hanging
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Kill the whole process group so helpers spawned by the tool die with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = h.WaitDelay
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = 5 * time.Second
	}
	start := time.Now()
	err := cmd.Run()
	klog.V(5).InfoS("exec", "cmd", argv, "duration", time.Since(start), "err", err)
	if err == nil {
		return stdout.Bytes(), nil
	}
	e := &Error{Cmd: argv, ExitCode: -1, Stderr: stderr.String(), Err: err}
	var exitErr *osexec.ExitError
	if errors.As(err, &exitErr) {
		e.ExitCode = exitErr.ExitCode()
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		e.Err = fmt.Errorf("%w (%v)", ctxErr, err)
	}
	return stdout.Bytes(), e
}

// baseEnv keeps only what tools need from our environment: PATH and the
// LVM_* variables that point lvm2 at a test configuration.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, "LVM_") || strings.HasPrefix(kv, "DM_") {
			env = append(env, kv)
		}
	}
	return env
}
