package exectest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/carve-csi/carve/pkg/exec"
)

// Recorded is one real tool run, as a capture file stores it:
//
//	-- N.argv --    the command as run, a JSON array
//	-- N.rc --      exit code
//	-- N.stdout --
//	-- N.stderr --  (empty on success: exec.Host keeps stderr only on failure)
//
// Sections whose key is not "N.<field>" are a capture's own (Capture.Extra).
type Recorded struct {
	Argv   []string
	RC     int
	Stdout string
	Stderr string
}

// Capture is a capture file: the runs, in order, and extra sections.
type Capture struct {
	Calls []Recorded
	Extra map[string]string
}

// Recorder runs commands for real and records them.
type Recorder struct {
	R     exec.Runner
	mu    sync.Mutex
	calls []Recorded
}

var _ exec.Runner = (*Recorder)(nil)

// Run implements exec.Runner.
func (r *Recorder) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := r.R.Run(ctx, name, args...)
	c := Recorded{Argv: append([]string{name}, args...), Stdout: string(out)}
	if err != nil {
		c.RC = exec.ExitCode(err)
		c.Stderr = exec.Stderr(err)
	}
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	return out, err
}

// Take returns the runs recorded since the last Take.
func (r *Recorder) Take() []Recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	return c
}

// WriteCapture writes c to path; extra sections come first, sorted by key.
func WriteCapture(path string, c Capture) error {
	var b bytes.Buffer
	keys := make([]string, 0, len(c.Extra))
	for k := range c.Extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	section := func(key, body string) {
		fmt.Fprintf(&b, "-- %s --\n%s", key, body)
		if body != "" && !strings.HasSuffix(body, "\n") {
			b.WriteByte('\n')
		}
	}
	for _, k := range keys {
		section(k, c.Extra[k])
	}
	for i, call := range c.Calls {
		var argv bytes.Buffer
		enc := json.NewEncoder(&argv)
		enc.SetEscapeHTML(false) // keep "&&" readable
		if err := enc.Encode(call.Argv); err != nil {
			return err
		}
		section(strconv.Itoa(i)+".argv", argv.String())
		section(strconv.Itoa(i)+".rc", strconv.Itoa(call.RC))
		section(strconv.Itoa(i)+".stdout", call.Stdout)
		section(strconv.Itoa(i)+".stderr", call.Stderr)
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// ReadCapture reads a file WriteCapture wrote.
func ReadCapture(path string) (Capture, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Capture{}, err
	}
	c := Capture{Extra: map[string]string{}}
	for _, sec := range SplitSections(data) {
		if n, _, ok := strings.Cut(sec.Key, "."); !ok || strings.Trim(n, "0123456789") != "" {
			c.Extra[sec.Key] = sec.Body
			continue
		}
		i, field, err := CallKey(sec.Key, len(c.Calls))
		if err != nil {
			return Capture{}, fmt.Errorf("%s: %w", path, err)
		}
		if i == len(c.Calls) {
			c.Calls = append(c.Calls, Recorded{})
		}
		r := &c.Calls[i]
		switch field {
		case "argv":
			err = json.Unmarshal([]byte(sec.Body), &r.Argv)
		case "rc":
			r.RC, err = strconv.Atoi(strings.TrimSpace(sec.Body))
		case "stdout":
			r.Stdout = sec.Body
		case "stderr":
			r.Stderr = sec.Body
		default:
			err = fmt.Errorf("bad section %q", sec.Key)
		}
		if err != nil {
			return Capture{}, fmt.Errorf("%s: %w", path, err)
		}
	}
	return c, nil
}

// Replay returns a Fake that answers calls in order and fails t on any other
// command, and on calls not made by the end of the test.
func Replay(t testing.TB, calls []Recorded) *Fake {
	t.Helper()
	var mu sync.Mutex
	f := &Fake{}
	f.Handler = func(ctx context.Context, argv []string) (Response, bool) {
		mu.Lock()
		defer mu.Unlock()
		if len(calls) == 0 || !reflect.DeepEqual(calls[0].Argv, argv) {
			if len(calls) > 0 {
				t.Errorf("command %q\n   want %q", argv, calls[0].Argv)
			} else {
				t.Errorf("unexpected command %q", argv)
			}
			return Response{}, false
		}
		c := calls[0]
		calls = calls[1:]
		return Response{Stdout: c.Stdout, Stderr: c.Stderr, ExitCode: c.RC}, true
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range calls {
			t.Errorf("expected command not issued: %q", c.Argv)
		}
	})
	return f
}
