package exec

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestRunCleanEnvironmentNoShellStdinClosed(t *testing.T) {
	t.Setenv("LC_ALL", "de_DE.UTF-8")
	t.Setenv("SECRET_TOKEN", "x")
	t.Setenv("LVM_SYSTEM_DIR", "/tmp/lvmconf")
	out, err := (&Host{}).Run(context.Background(), "env")
	if err != nil {
		t.Fatal(err)
	}
	env := string(out)
	if !strings.Contains(env, "LC_ALL=C\n") || strings.Contains(env, "de_DE") || strings.Contains(env, "SECRET_TOKEN") {
		t.Fatalf("environment:\n%s", env)
	}
	if !strings.Contains(env, "LVM_SYSTEM_DIR=/tmp/lvmconf") {
		t.Fatalf("LVM_* not passed:\n%s", env)
	}
	// Arguments reach the program verbatim: no shell expands them.
	out, err = (&Host{}).Run(context.Background(), "echo", "$(id)", "a;b", "*")
	if err != nil || string(out) != "$(id) a;b *\n" {
		t.Fatalf("echo: %q, %v", out, err)
	}
	// A tool that reads stdin sees EOF at once instead of hanging.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if out, err := (&Host{}).Run(ctx, "cat"); err != nil || len(out) != 0 {
		t.Fatalf("cat: %q, %v", out, err)
	}
}

func TestErrorCarriesCommandExitCodeAndStderr(t *testing.T) {
	_, err := (&Host{Prefix: []string{"env"}}).Run(context.Background(), "sh", "-c", "echo oops >&2; exit 5")
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %T %v", err, err)
	}
	if e.ExitCode != 5 || ExitCode(err) != 5 || strings.TrimSpace(Stderr(err)) != "oops" {
		t.Fatalf("error %+v", e)
	}
	if want := "env sh -c echo oops >&2; exit 5: exit code 5: oops"; err.Error() != want {
		t.Fatalf("message %q, want %q", err.Error(), want)
	}
	if _, err := (&Host{}).Run(context.Background(), "/nonexistent/tool"); ExitCode(err) != -1 || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing tool: %v", err)
	}
}

func TestContextKillsHungToolAndItsChildren(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	// The child sleep keeps stdout open: only killing the group ends the wait.
	_, err := (&Host{WaitDelay: 10 * time.Second}).Run(ctx, "sh", "-c", "sleep 60 & sleep 60")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("returned after %v: the process group was not killed", d)
	}
	if !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("message hides the cause: %v", err)
	}
	if out, err := (&Host{}).Run(context.Background(), "true"); err != nil || len(out) != 0 {
		t.Fatalf("next call: %v", err)
	}
}
