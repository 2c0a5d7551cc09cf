package cluster

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
)

// tailLines is how much of a failed scenario's output the closing summary
// repeats: enough for the failure and what the scenario logged after it. CI
// shows a window around the summary, and a scenario's first lines scroll out
// of it behind the other scenarios' output (the stop-20 CI run showed only
// "failed: snapshot-restore").
const tailLines = 60

// verdict is the testing package's result line of a test (indented for
// subtests); a scenario's own output may hold other lines that start "--- ".
var verdict = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): `)

// testTails keeps the last lines of each test's `-test.v` output. It follows
// the markers the testing package prints when output switches between tests
// (=== RUN, === CONT, === NAME, === PAUSE), so parallel scenarios' lines are
// kept apart.
type testTails struct {
	mu      sync.Mutex
	max     int
	current string
	lines   map[string][]string
}

func newTestTails(max int) *testTails {
	return &testTails{max: max, lines: map[string][]string{}}
}

// add files one line of output under the test it belongs to.
func (t *testTails) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range []string{"=== RUN", "=== CONT", "=== NAME", "=== PAUSE"} {
		if rest, ok := strings.CutPrefix(line, m); ok {
			t.current = strings.TrimSpace(rest)
			return
		}
	}
	if verdict.MatchString(line) {
		// The verdicts; what follows them (FAIL, ok) belongs to no scenario.
		t.current = ""
		return
	}
	if t.current == "" {
		return
	}
	l := append(t.lines[t.current], line)
	if len(l) > t.max {
		l = l[len(l)-t.max:]
	}
	t.lines[t.current] = l
}

// tail is the last lines test printed (its full name, TestRealNode/...).
func (t *testTails) tail(test string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.lines[test]...)
}

// captureStdout sends what the tests print to stdout through tails and on to
// the real stdout; the returned function stops that and restores os.Stdout.
func captureStdout(tails *testTails) (restore func(), err error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	orig := os.Stdout
	os.Stdout = w
	done := make(chan struct{})
	go func() {
		defer close(done)
		br := bufio.NewReader(r)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				_, _ = io.WriteString(orig, line)
				tails.add(strings.TrimRight(line, "\n"))
			}
			if err != nil {
				return
			}
		}
	}()
	return func() {
		os.Stdout = orig
		_ = w.Close()
		<-done
		_ = r.Close()
	}, nil
}

// printTails repeats the end of each failed scenario's output.
func printTails(w io.Writer, tails *testTails, failed []string) {
	for _, name := range failed {
		l := tails.tail(name)
		fmt.Fprintf(w, "----- %s: the last %d lines of its output -----\n", name, len(l))
		for _, s := range l {
			fmt.Fprintln(w, s)
		}
	}
}

// TestTestTails feeds testTails the -test.v output of go1.26 for a failing
// subtest and two parallel ones (copied from a real run): each test keeps only
// its own lines, the summary lines go nowhere, and the cap keeps the last ones;
// a line of a test's message that starts "--- " is not a verdict.
func TestTestTails(t *testing.T) {
	const out = `=== RUN   TestRealNode
=== RUN   TestRealNode/first
    x_test.go:4: alone
    x_test.go:4: broke:
        --- a line of the message, not a verdict
        second line
=== RUN   TestRealNode/together
=== RUN   TestRealNode/together/a
=== PAUSE TestRealNode/together/a
=== RUN   TestRealNode/together/b
=== PAUSE TestRealNode/together/b
=== CONT  TestRealNode/together/a
    x_test.go:6: a1
=== CONT  TestRealNode/together/b
    x_test.go:7: b1
=== NAME  TestRealNode/together/a
    x_test.go:6: a2
=== NAME  TestRealNode/together/b
    x_test.go:7: b failed
--- FAIL: TestRealNode (0.03s)
    --- FAIL: TestRealNode/first (0.00s)
    --- FAIL: TestRealNode/together (0.00s)
        --- PASS: TestRealNode/together/a (0.02s)
        --- FAIL: TestRealNode/together/b (0.03s)
FAIL`
	tails := newTestTails(2)
	for _, l := range strings.Split(out, "\n") {
		tails.add(l)
	}
	for name, want := range map[string][]string{
		"TestRealNode/first":        {"        --- a line of the message, not a verdict", "        second line"},
		"TestRealNode/together/a":   {"    x_test.go:6: a1", "    x_test.go:6: a2"},
		"TestRealNode/together/b":   {"    x_test.go:7: b1", "    x_test.go:7: b failed"},
		"TestRealNode/together":     nil,
		"TestRealNode/never-ran-it": nil,
	} {
		if got := tails.tail(name); !slices.Equal(got, want) {
			t.Errorf("tail(%s) = %q, want %q", name, got, want)
		}
	}
	var b strings.Builder
	printTails(&b, tails, []string{"TestRealNode/together/b"})
	if want := "----- TestRealNode/together/b: the last 2 lines of its output -----\n    x_test.go:7: b1\n    x_test.go:7: b failed\n"; b.String() != want {
		t.Errorf("printTails printed %q, want %q", b.String(), want)
	}
}
