// Package exectest provides a fake exec.Runner that replays recorded tool output.
package exectest

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/carve-csi/carve/pkg/exec"
)

// Response is what one expected command produces.
type Response struct {
	Stdout   string
	Stderr   string
	ExitCode int
	// Hook, if set, runs when the command is matched (e.g. to block until ctx ends).
	Hook func(ctx context.Context) error
}

// Call is one expected command: argv must match exactly.
type Call struct {
	Argv []string
	Response
}

// Fake replays Calls in order. Unexpected commands fail the run with an error
// that names them, so tests see exactly which command the code issued.
type Fake struct {
	mu    sync.Mutex
	calls []Call
	// Handler, if set, answers every command not covered by calls.
	Handler func(ctx context.Context, argv []string) (Response, bool)
	// Log records every command run, in order.
	Log [][]string
}

var _ exec.Runner = (*Fake)(nil)

// Expect queues a call given as space-separated words.
func (f *Fake) Expect(argv string, r Response) *Fake {
	return f.ExpectArgv(strings.Fields(argv), r)
}

// ExpectArgv queues a call whose arguments may contain spaces.
func (f *Fake) ExpectArgv(argv []string, r Response) *Fake {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, Call{Argv: argv, Response: r})
	return f
}

// Pending returns the calls that were expected but not made.
func (f *Fake) Pending() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Call(nil), f.calls...)
}

// Run implements exec.Runner.
func (f *Fake) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	f.mu.Lock()
	f.Log = append(f.Log, argv)
	var r Response
	matched := false
	if len(f.calls) > 0 && equal(f.calls[0].Argv, argv) {
		r, matched = f.calls[0].Response, true
		f.calls = f.calls[1:]
	}
	handler := f.Handler
	f.mu.Unlock()
	if !matched && handler != nil {
		r, matched = handler(ctx, argv)
	}
	if !matched {
		return nil, &exec.Error{Cmd: argv, ExitCode: -1, Err: fmt.Errorf("exectest: unexpected command %q", strings.Join(argv, " "))}
	}
	if r.Hook != nil {
		if err := r.Hook(ctx); err != nil {
			return nil, &exec.Error{Cmd: argv, ExitCode: -1, Err: err}
		}
	}
	if r.ExitCode != 0 {
		return []byte(r.Stdout), &exec.Error{Cmd: argv, ExitCode: r.ExitCode, Stderr: r.Stderr, Err: fmt.Errorf("exit status %d", r.ExitCode)}
	}
	return []byte(r.Stdout), nil
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
