// Package loopdev gives tests a loop device backed by a sparse file. The
// machines carve is tested on have only 8 loop devices, so each test takes one
// with `losetup -f --show`, releases it by name, and skips (with the reason)
// when it is not root or none is free.
package loopdev

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// New attaches a loop device over a sparse file of sizeBytes and detaches it
// when the test ends. It skips the test when not root or no loop device is free.
func New(t testing.TB, sizeBytes int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: loop devices need root")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("skipping: losetup not installed")
	}
	file := filepath.Join(t.TempDir(), "backing.img")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(sizeBytes); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("losetup", "-f", "--show", file).CombinedOutput()
	if err != nil {
		t.Skipf("skipping: no free loop device (losetup -f --show: %v: %s)", err, strings.TrimSpace(string(out)))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}
