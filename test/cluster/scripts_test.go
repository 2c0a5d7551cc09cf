package cluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// runScript runs a pod script with Debian's busybox (the workload image's
// package), its paths (/data, the block device, the termination log) moved
// into a temp dir, and returns the termination log parsed.
func runScript(t *testing.T, script string, block bool) map[string]string {
	t.Helper()
	skipInCluster(t)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (apt-get install busybox-static): the pod scripts are checked with the workload image's shell")
	}
	dir := t.TempDir()
	data, dev, log := filepath.Join(dir, "data"), filepath.Join(dir, "dev"), filepath.Join(dir, "termination-log")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if block {
		if err := os.WriteFile(dev, make([]byte, 4<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	script = strings.NewReplacer("/data", data, DevicePath, dev, "/dev/termination-log", log).Replace(script)
	out, err := exec.Command(bb, "sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("script failed: %v\n%s\nscript:\n%s", err, out, script)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatalf("no termination log: %v (output %s)", err, out)
	}
	return ParseKV(string(b))
}

func TestFSScript(t *testing.T) {
	m := runScript(t, fsScript("tok-1"), false)
	if m["token"] != "tok-1" || m["sum"] == "" || m["sum"] != m["sum2"] || m["uid"] != strconv.Itoa(os.Getuid()) {
		t.Errorf("report %v", m)
	}
	if k, err := strconv.ParseInt(m["dfk"], 10, 64); err != nil || k <= 0 {
		t.Errorf("dfk %q: %v", m["dfk"], err)
	}
	if _, err := strconv.Atoi(m["gid"]); err != nil {
		t.Errorf("gid %q: %v", m["gid"], err)
	}
}

func TestBlockScript(t *testing.T) {
	m := runScript(t, blockScript("tok-2"), true)
	if m["token"] != "tok-2" || m["bytes"] != strconv.Itoa(4<<20) {
		t.Errorf("report %v, want token tok-2 and %d bytes", m, 4<<20)
	}
}

func TestGrowAndLookScripts(t *testing.T) {
	// The filesystem is already bigger than 1 KiB, so the wait ends at once.
	m := runScript(t, "echo tok-3 > /data/token; "+growScript(1), false)
	if m["token"] != "tok-3" || m["dfk"] == "" {
		t.Errorf("grow report %v", m)
	}
	m = runScript(t, "echo tok-4 > /data/token; "+lookScript, false)
	if m["token"] != "tok-4" || m["wrote"] != "after" {
		t.Errorf("look report %v", m)
	}
}

// skipInCluster skips the unit tests of this package in the cluster run
// (hack/cluster.sh runs the whole test binary): make test-unit runs them.
func skipInCluster(t *testing.T) {
	t.Helper()
	if os.Getenv("CARVE_CLUSTER") == "1" {
		t.Skip("a unit test (make test-unit runs it); this is the cluster run")
	}
}

// The snapshot scenario's scripts: the writer's cache has the md5 the
// scenario computes on the host, and the reader reports it and its own file.
func TestCacheScripts(t *testing.T) {
	w := runScript(t, writeCacheScript("tok-5"), false)
	if w["bytes"] != strconv.FormatInt(cacheBytes, 10) || w["sum"] != cacheSum("tok-5") {
		t.Errorf("writer report %v, want %d bytes with md5 %s", w, cacheBytes, cacheSum("tok-5"))
	}
	m := runScript(t, writeCacheScript("tok-6")+"\n"+readCacheScript("reader-1"), false)
	if m["bytes"] != strconv.FormatInt(cacheBytes, 10) || m["sum"] != cacheSum("tok-6") {
		t.Errorf("reader report %v, want %d bytes with md5 %s", m, cacheBytes, cacheSum("tok-6"))
	}
	if got := strings.TrimSpace(m["files"]); got != "cache reader-1" {
		t.Errorf("reader lists %q, want %q", got, "cache reader-1")
	}
}
