package mounter

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	mount "k8s.io/mount-utils"
)

func TestWantsDAX(t *testing.T) {
	for opts, want := range map[*[]string]bool{
		{"dax"}: true, {"ro", "dax=always"}: true, {"dax=never"}: false, {"daxx"}: false, {}: false,
	} {
		if got := WantsDAX(*opts); got != want {
			t.Errorf("WantsDAX(%q) = %v", *opts, got)
		}
	}
}

func TestHasDAX(t *testing.T) {
	for _, c := range []struct {
		mi   mount.MountInfo
		want bool
	}{
		// As /proc/self/mountinfo showed them in the VM.
		{mount.MountInfo{MountOptions: []string{"rw", "relatime"}, SuperOptions: []string{"rw", "dax=always"}}, true},
		{mount.MountInfo{MountOptions: []string{"rw", "relatime"}, SuperOptions: []string{"rw", "attr2", "dax=never", "inode64"}}, false},
		{mount.MountInfo{MountOptions: []string{"rw"}, SuperOptions: []string{"rw", "dax"}}, true},
		{mount.MountInfo{MountOptions: []string{"rw"}, SuperOptions: []string{"rw"}}, false},
	} {
		if got := hasDAX(&c.mi); got != c.want {
			t.Errorf("hasDAX(%+v) = %v", c.mi, got)
		}
	}
}

func TestDAXFormatOptions(t *testing.T) {
	if got := daxFormatOptions("xfs"); !reflect.DeepEqual(got, []string{"-m", "reflink=0"}) {
		t.Errorf("xfs: %q", got)
	}
	if got := daxFormatOptions("ext4"); len(got) != 2 || got[0] != "-b" || got[1] != "4096" && got[1] != "65536" && got[1] != "16384" {
		t.Errorf("ext4: %q", got)
	}
}

// A fake /sys/dev/block: pmem0 (DAX), loop0 (not), sda1 (a partition: its
// disk answers), an old kernel without the attribute.
func TestDAXSupportedSysfs(t *testing.T) {
	root := t.TempDir()
	mk := func(dir, dax string) {
		if err := os.MkdirAll(filepath.Join(root, dir, "queue"), 0o755); err != nil {
			t.Fatal(err)
		}
		if dax != "" {
			if err := os.WriteFile(filepath.Join(root, dir, "queue", "dax"), []byte(dax+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk("devices/ndbus0/region0/pfn0.1/block/pmem0", "1")
	mk("devices/virtual/block/loop0", "0")
	mk("devices/pci/block/sda", "0")
	mk("devices/virtual/block/old", "")
	if err := os.MkdirAll(filepath.Join(root, "devices/pci/block/sda/sda1"), 0o755); err != nil {
		t.Fatal(err)
	}
	sysBlock := filepath.Join(root, "dev", "block")
	if err := os.MkdirAll(sysBlock, 0o755); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"259:0": "../../devices/ndbus0/region0/pfn0.1/block/pmem0",
		"7:0":   "../../devices/virtual/block/loop0",
		"8:1":   "../../devices/pci/block/sda/sda1",
		"9:9":   "../../devices/virtual/block/old",
	} {
		if err := os.Symlink(target, filepath.Join(sysBlock, link)); err != nil {
			t.Fatal(err)
		}
	}
	m := &Mounter{sysBlock: sysBlock}
	for _, c := range []struct {
		maj, min uint32
		want     bool
	}{{259, 0, true}, {7, 0, false}, {8, 1, false}, {9, 9, false}} {
		got, err := m.daxSupported(c.maj, c.min)
		if err != nil || got != c.want {
			t.Errorf("%d:%d: %v, %v; want %v", c.maj, c.min, got, err, c.want)
		}
	}
	if _, err := m.daxSupported(1, 2); err == nil {
		t.Error("unknown device number accepted")
	}
}

// A loop device cannot do DAX: refused before anything is formatted or mounted.
func TestFormatAndMountDAXRefusedOnLoop(t *testing.T) {
	e := newEnv(t)
	dev := e.loop(ext4Size)
	target := e.path("staging", "dax")
	for _, fs := range []string{"ext4", "xfs"} {
		err := e.m.FormatAndMount(dev, target, fs, []string{"dax"})
		if !errors.Is(err, ErrDAXUnsupported) {
			t.Fatalf("%s: err = %v, want ErrDAXUnsupported", fs, err)
		}
		if got := blkidType(t, dev); got != "" {
			t.Fatalf("%s: device was formatted (%s)", fs, got)
		}
		if mounted, _ := e.m.IsMountPoint(target); mounted {
			t.Fatalf("%s: target mounted", fs)
		}
	}
}
