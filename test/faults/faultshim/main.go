// Command faultshim stands in for the tools carve-csi runs (lvm, mkfs.ext4,
// mount, umount, blkid, fsck, resize2fs, ...) in the crash-consistency test
// (test/faults): installed as symlinks named after those tools in a directory
// placed first in the driver's PATH, it runs the real tool and, at the
// configured Nth call, SIGKILLs the driver before or after the tool ran, or
// while it runs (together with the tool, as a pod's whole cgroup is killed).
// So the driver can be stopped dead at every step boundary without a test
// branch in production code.
//
// Everything lives in the shim's own directory (the driver passes only PATH,
// LVM_* and DM_* to lvm, so no environment variable can carry the settings):
//
//	fault.conf  "pid=<driver pid> kill=<N> when=before|after|during
//	            delay=<ms>" (any order, whitespace separated; delay is how
//	            long "during" lets the tool run before killing it); kill=0
//	            or a missing file only counts
//	calls.log   one line per counted call: "<n> <tool> <args...>", and
//	            " !kill-<when>" on the call that killed; after a "during"
//	            kill a line "<n> !tool-killed" or "<n> !tool-finished" (the
//	            tool ended before the delay)
//	calls.lock  flock serializing the count
//
// Only calls whose parent is the configured pid are counted (a tool that runs
// another tool, e.g. fsck running fsck.ext4, never reaches the shim: the real
// tool gets a PATH without the shim directory).
package main

import (
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args, os.Environ()))
}

func run(args, env []string) int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "faultshim: %v\n", err)
		return 127
	}
	dir := filepath.Dir(self)
	tool := filepath.Base(args[0])
	path := stripDir(lookupEnv(env, "PATH"), dir)
	real, err := lookPath(tool, path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "faultshim: %s: %v\n", tool, err)
		return 127
	}
	env = setEnv(env, "PATH", path)

	act, n := actNone, 0
	cfg, err := readConfig(filepath.Join(dir, "fault.conf"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "faultshim: %v\n", err)
		return 126
	}
	if cfg.PID != 0 && cfg.PID == os.Getppid() {
		if act, n, err = count(dir, cfg, tool, args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "faultshim: %v\n", err)
			return 126
		}
	}
	switch act {
	case actDuring:
		code, killed := runChildKilled(real, args, env, time.Duration(cfg.DelayMS)*time.Millisecond)
		mark := "!tool-finished"
		if killed {
			mark = "!tool-killed"
		}
		_ = appendLine(filepath.Join(dir, "calls.log"), fmt.Sprintf("%d %s", n, mark))
		_ = syscall.Kill(os.Getppid(), syscall.SIGKILL)
		return code
	case actBefore:
		_ = syscall.Kill(os.Getppid(), syscall.SIGKILL)
		return 137
	case actAfter:
		code := runChild(real, args, env)
		_ = syscall.Kill(os.Getppid(), syscall.SIGKILL)
		return code
	}
	// Not the Nth call: become the real tool, so the caller sees exactly its
	// exit status, output and signals.
	err = syscall.Exec(real, append([]string{tool}, args[1:]...), env)
	fmt.Fprintf(os.Stderr, "faultshim: exec %s: %v\n", real, err)
	return 127
}

type action int

const (
	actNone action = iota
	actBefore
	actAfter
	actDuring
)

// Config is fault.conf.
type Config struct {
	PID     int    // the driver; calls from other parents are not counted
	Kill    int    // 1-based call that kills the driver; 0 = count only
	When    string // "before", "after" or "during" the tool's run
	DelayMS int    // "during": how long the tool runs before both are killed
}

func readConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Config{}, nil
	}
	if err != nil {
		return Config{}, err
	}
	return parseConfig(string(b))
}

func parseConfig(s string) (Config, error) {
	c := Config{When: "before"}
	for _, f := range strings.Fields(s) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return c, fmt.Errorf("fault.conf: %q is not key=value", f)
		}
		var err error
		switch k {
		case "pid":
			_, err = fmt.Sscan(v, &c.PID)
		case "kill":
			_, err = fmt.Sscan(v, &c.Kill)
		case "delay":
			_, err = fmt.Sscan(v, &c.DelayMS)
		case "when":
			if v != "before" && v != "after" && v != "during" {
				err = fmt.Errorf("want before, after or during")
			}
			c.When = v
		default:
			err = fmt.Errorf("unknown key")
		}
		if err != nil {
			return c, fmt.Errorf("fault.conf: %s: %v", f, err)
		}
	}
	return c, nil
}

// count appends this call to calls.log under the lock and says whether it is
// the one that kills, and its number.
func count(dir string, cfg Config, tool string, args []string) (action, int, error) {
	lock, err := os.OpenFile(filepath.Join(dir, "calls.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return actNone, 0, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return actNone, 0, fmt.Errorf("flock: %w", err)
	}
	logPath := filepath.Join(dir, "calls.log")
	old, err := os.ReadFile(logPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return actNone, 0, err
	}
	n := strings.Count(string(old), "\n") + 1
	act := actNone
	line := fmt.Sprintf("%d %s %s", n, tool, strings.Join(args, " "))
	if n == cfg.Kill {
		act = map[string]action{"before": actBefore, "after": actAfter, "during": actDuring}[cfg.When]
		line += " !kill-" + cfg.When
	}
	return act, n, appendLine(logPath, line)
}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(strings.ReplaceAll(line, "\n", " ") + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// runChildKilled runs the real tool in its own process group and kills the
// group after delay unless the tool ended first; it returns the exit code and
// whether the tool was killed.
func runChildKilled(real string, args, env []string, delay time.Duration) (int, bool) {
	cmd := osexec.Command(real, args[1:]...)
	cmd.Args[0] = filepath.Base(args[0])
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "faultshim: %v\n", err)
		return 127, false
	}
	timer := time.AfterFunc(delay, func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	err := cmd.Wait()
	timer.Stop()
	var ee *osexec.ExitError
	switch {
	case err == nil:
		return 0, false
	case errors.As(err, &ee):
		ws, ok := ee.Sys().(syscall.WaitStatus)
		return ee.ExitCode(), ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
	}
	return 127, false
}

// runChild runs the real tool with our stdio and returns its exit code.
func runChild(real string, args, env []string) int {
	cmd := osexec.Command(real, args[1:]...)
	cmd.Args[0] = filepath.Base(args[0])
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	var ee *osexec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	fmt.Fprintf(os.Stderr, "faultshim: %v\n", err)
	return 127
}

// stripDir removes dir from a PATH list.
func stripDir(path, dir string) string {
	var keep []string
	for _, p := range filepath.SplitList(path) {
		if p != "" && filepath.Clean(p) != filepath.Clean(dir) {
			keep = append(keep, p)
		}
	}
	return strings.Join(keep, string(filepath.ListSeparator))
}

func lookPath(tool, path string) (string, error) {
	for _, d := range filepath.SplitList(path) {
		p := filepath.Join(d, tool)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in PATH %q", path)
}

func lookupEnv(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val // the last one wins, as in os/exec
		}
	}
	return v
}

func setEnv(env []string, key, val string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+val)
}
