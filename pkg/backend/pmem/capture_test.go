package pmem

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	cexec "github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/exec/exectest"
	"github.com/carve-csi/carve/pkg/names"
)

// Captures are real ndctl runs (in the VM rig's emulated NVDIMM) stored under
// testdata/<scenario>.txt:
//
//	-- sysfs --      the nvdimm bus in sysfs before the scenario (see snapshotSysfs)
//	-- N.argv --     a command as run, a JSON array
//	-- N.rc --       exit code
//	-- N.stdout --
//	-- N.stderr --   (empty on success: exec.Host keeps stderr only on failure)
//	-- N.sysfs --    the nvdimm bus after the command, when it changed
//	-- N.note --     optional remark
//	-- result --     what the backend call returned (error text or volume JSON)
//
// Regenerate them inside the VM (root, a scratch region whose namespaces may
// all be destroyed) with
//
//	CARVE_PMEM_CAPTURE=1 CARVE_PMEM_REGION=region0 CARVE_PMEM_CAPTURE_DIR=<dir> ./pmem.test -test.run TestCapture -test.v
//
// (test/pmem/vm-pmem.sh capture does that). The unit tests replay them through
// exectest.Fake and a temporary sysfs tree, and require that the code issues
// exactly the recorded commands.

const (
	capOwner = "carve.csi.dev"
	capPool  = "fast"
)

var (
	capName      = "pvc-1234/odd name ü=&"
	capID        = names.VolumeID(capName)
	capPVCName   = "pvc-0f3c9a52-7f0e-4d8e-9d2a-3b5a6c7d8e9f"
	capPVCID     = names.VolumeID(capPVCName)
	capEphName   = "csi-4b1d0c5e6f7a8b9c4b1d0c5e6f7a8b9c4b1d0c5e6f7a8b9c4b1d0c5e6f7a8b9c"
	capEphID     = names.VolumeID(capEphName)
	capEphTarget = "/var/lib/kubelet/pods/0f3c9a52-7f0e-4d8e-9d2a-3b5a6c7d8e9f/volumes/kubernetes.io~csi/scratch/mount"
	capOddName   = "pvc-odd-size"
	capOddID     = names.VolumeID(capOddName)
	capKillName  = "pvc-killed"
	capKillID    = names.VolumeID(capKillName)
	capBigName   = "pvc-too-big"
	capBigID     = names.VolumeID(capBigName)
	capFragNames = []string{"pvc-frag-a", "pvc-frag-b", "pvc-frag-c"}
	capForeign   = "carve-foreign-0123456789abcdef" // carve-shaped name, made by hand
	capMissing   = names.VolumeID("pvc-never-created")
	capVG        = "carve-lvm-fast"
)

type capCall struct {
	Argv   []string
	RC     int
	Stdout string
	Stderr string
	Sysfs  string // state after the call; "" = unchanged
	Note   string
}

type capture struct {
	Sysfs  string
	Calls  []capCall
	Result string
}

// recorder runs commands for real and records them with the sysfs state after each.
type recorder struct {
	mu       sync.Mutex
	r        cexec.Runner
	sysRoot  string
	calls    []capCall
	lastSys  string
	startSys string
	// after, if set, may replace the result of a command that really ran.
	after func(argv []string, out []byte, err error) ([]byte, error, string)
}

func (r *recorder) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := r.r.Run(ctx, name, args...)
	argv := append([]string{name}, args...)
	c := capCall{Argv: argv, Stdout: string(out)}
	if err != nil {
		c.RC = cexec.ExitCode(err)
		c.Stderr = cexec.Stderr(err)
	}
	if r.after != nil {
		var note string
		out, err, note = r.after(argv, out, err)
		c.Note = note
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := snapshotSysfs(r.sysRoot); s != r.lastSys {
		c.Sysfs, r.lastSys = s, s
	}
	r.calls = append(r.calls, c)
	return out, err
}

func (r *recorder) begin() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = nil
	r.lastSys = snapshotSysfs(r.sysRoot)
	r.startSys = r.lastSys
}

func (r *recorder) take() capture {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := capture{Sysfs: r.startSys, Calls: r.calls}
	r.calls = nil
	return c
}

// The sysfs attributes the backend reads, and the block device directories.
var sysAttrs = map[string][]string{
	"region":    {"size", "align", "available_size", "max_available_extent"},
	"namespace": {"alt_name", "size", "uuid", "holder", "mode"},
	"pfn":       {"namespace", "mode"},
}

var sysDevPattern = regexp.MustCompile(`^(region|namespace|pfn)\d+(\.\d+)?$`)

// snapshotSysfs renders the nvdimm bus as sorted "path value" lines; a block
// device directory is "dev/block/name/".
func snapshotSysfs(root string) string {
	entries, err := os.ReadDir(root)
	if err != nil {
		return "# " + err.Error() + "\n"
	}
	var lines []string
	for _, e := range entries {
		m := sysDevPattern.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		for _, a := range sysAttrs[m[1]] {
			b, err := os.ReadFile(filepath.Join(root, e.Name(), a))
			if err != nil {
				continue
			}
			lines = append(lines, e.Name()+"/"+a+" "+strings.TrimSpace(string(b)))
		}
		if bl, err := os.ReadDir(filepath.Join(root, e.Name(), "block")); err == nil {
			for _, d := range bl {
				lines = append(lines, e.Name()+"/block/"+d.Name()+"/")
			}
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

// writeSysfs materializes a snapshot as a directory tree at root, replacing
// what was there.
func writeSysfs(root, snap string) error {
	if err := os.RemoveAll(root); err != nil {
		return err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	for _, line := range strings.Split(snap, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, "/") {
			if err := os.MkdirAll(filepath.Join(root, line), 0o755); err != nil {
				return err
			}
			continue
		}
		p, v, _ := strings.Cut(line, " ")
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(v+"\n"), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func writeCapture(path string, c capture) error {
	var b bytes.Buffer
	section := func(k, v string) {
		fmt.Fprintf(&b, "-- %s --\n%s", k, v)
		if v != "" && !strings.HasSuffix(v, "\n") {
			b.WriteByte('\n')
		}
	}
	section("sysfs", c.Sysfs)
	for i, call := range c.Calls {
		var argv bytes.Buffer
		enc := json.NewEncoder(&argv)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(call.Argv); err != nil {
			return err
		}
		section(fmt.Sprintf("%d.argv", i), argv.String())
		section(fmt.Sprintf("%d.rc", i), strconv.Itoa(call.RC))
		section(fmt.Sprintf("%d.stdout", i), call.Stdout)
		section(fmt.Sprintf("%d.stderr", i), call.Stderr)
		if call.Sysfs != "" {
			section(fmt.Sprintf("%d.sysfs", i), call.Sysfs)
		}
		if call.Note != "" {
			section(fmt.Sprintf("%d.note", i), call.Note)
		}
	}
	section("result", c.Result)
	return os.WriteFile(path, b.Bytes(), 0o644)
}

func readCapture(path string) (capture, error) {
	var c capture
	data, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	for _, sec := range exectest.SplitSections(data) {
		switch sec.Key {
		case "sysfs":
			c.Sysfs = sec.Body
			continue
		case "result":
			c.Result = strings.TrimSuffix(sec.Body, "\n")
			continue
		}
		i, field, err := exectest.CallKey(sec.Key, len(c.Calls))
		if err != nil {
			return c, fmt.Errorf("%s: %w", path, err)
		}
		if i == len(c.Calls) {
			c.Calls = append(c.Calls, capCall{})
		}
		call := &c.Calls[i]
		switch field {
		case "argv":
			err = json.Unmarshal([]byte(sec.Body), &call.Argv)
		case "rc":
			call.RC, err = strconv.Atoi(strings.TrimSpace(sec.Body))
		case "stdout":
			call.Stdout = sec.Body
		case "stderr":
			call.Stderr = sec.Body
		case "sysfs":
			call.Sysfs = sec.Body
		case "note":
			call.Note = sec.Body
		default:
			err = fmt.Errorf("bad section %q", sec.Key)
		}
		if err != nil {
			return c, fmt.Errorf("%s: %w", path, err)
		}
	}
	return c, nil
}

func describe(v any, err error) string {
	if err != nil {
		return "error: " + err.Error()
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func TestCapture(t *testing.T) {
	region := os.Getenv("CARVE_PMEM_REGION")
	if os.Getenv("CARVE_PMEM_CAPTURE") == "" || region == "" {
		t.Skip("set CARVE_PMEM_CAPTURE=1 and CARVE_PMEM_REGION=<scratch region> to re-record testdata/*.txt from real ndctl (root, NVDIMM; destroys every namespace in the region)")
	}
	ctx := context.Background()
	dir := os.Getenv("CARVE_PMEM_CAPTURE_DIR")
	if dir == "" {
		dir = "testdata"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	host := &cexec.Host{}
	rec := &recorder{r: host, sysRoot: DefaultSysfs}
	state := t.TempDir()
	must := func(args ...string) string {
		t.Helper()
		out, err := host.Run(ctx, args[0], args[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	step := func(name string, f func() string) {
		t.Helper()
		rec.begin()
		res := f()
		t.Logf("%s: %s", name, res)
		c := rec.take()
		c.Result = res
		if err := writeCapture(filepath.Join(dir, name+".txt"), c); err != nil {
			t.Fatal(err)
		}
	}
	bare := func(args ...string) string {
		_, err := rec.Run(ctx, args[0], args[1:]...)
		return describe(nil, err)
	}
	devOf := func(id string) string {
		t.Helper()
		ns, err := sysfs{root: DefaultSysfs}.namespaces([]string{region}, id)
		if err != nil || len(ns) != 1 {
			t.Fatalf("namespace %s: %v %v", id, ns, err)
		}
		return ns[0].Dev
	}

	// A fresh NVDIMM first: no labels, one legacy namespace over the region
	// (vm-pmem.sh capture leaves the region as the VM booted it).
	step("new-label-less", func() string {
		_, err := New(ctx, rec, capPool, region, capOwner, state)
		if err == nil {
			t.Fatalf("New accepted %s: run the capture on a fresh VM, whose NVDIMM has no labels yet", region)
		}
		return describe(nil, err)
	})
	must("ndctl", "disable-region", region)
	must("ndctl", "init-labels", "-f", "all")
	must("ndctl", "enable-region", region)

	step("new-missing-region", func() string {
		_, err := New(ctx, rec, capPool, "region9", capOwner, state)
		return describe(nil, err)
	})
	var b *Backend
	step("new", func() string {
		var err error
		b, err = New(ctx, rec, capPool, region, capOwner, state)
		return describe(nil, err)
	})
	if b == nil {
		t.Fatal("New failed")
	}
	step("capacity-empty", func() string { return describe(b.Capacity(ctx)) })
	step("create", func() string {
		return describe(b.Create(ctx, backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 1 << 30}))
	})
	step("create-pvc", func() string {
		return describe(b.Create(ctx, backend.CreateRequest{ID: capPVCID, Name: capPVCName, SizeBytes: 62 << 20}))
	})
	step("create-ephemeral", func() string {
		return describe(b.Create(ctx, backend.CreateRequest{ID: capEphID, Name: capEphName, SizeBytes: 100 << 20, Ephemeral: true, TargetPath: capEphTarget}))
	})
	step("create-odd", func() string { // 130 MiB: 144 MiB raw, 140 MiB usable
		return describe(b.Create(ctx, backend.CreateRequest{ID: capOddID, Name: capOddName, SizeBytes: 130 << 20}))
	})
	step("create-exists", func() string {
		return describe(b.Create(ctx, backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 1 << 30}))
	})
	step("create-nospace", func() string {
		return describe(b.Create(ctx, backend.CreateRequest{ID: capBigID, Name: capBigName, SizeBytes: 64 << 30}))
	})
	step("foreign", func() string {
		return bare("ndctl", "create-namespace", "-r", region, "-m", "fsdax", "-s", "32M", "-n", capForeign) + "; " +
			bare("ndctl", "create-namespace", "-r", region, "-m", "fsdax", "-s", "32M", "-n", "scratch")
	})
	step("list", func() string { return describe(b.List(ctx)) })
	step("get", func() string { return describe(b.Get(ctx, capID)) })
	step("get-ephemeral", func() string { return describe(b.Get(ctx, capEphID)) })
	step("get-foreign", func() string { return describe(b.Get(ctx, capForeign)) })
	step("get-missing", func() string { return describe(b.Get(ctx, capMissing)) })
	step("capacity", func() string { return describe(b.Capacity(ctx)) })
	step("expand-noop", func() string { return describe(b.Expand(ctx, capID, 1<<30)) })
	step("expand", func() string { return describe(b.Expand(ctx, capID, 2<<30)) })
	step("activate", func() string { return describe(b.Activate(ctx, capID)) })
	step("activate-foreign", func() string { return describe(b.Activate(ctx, capForeign)) })
	must("ndctl", "disable-namespace", devOf(capPVCID))
	step("get-disabled", func() string { return describe(b.Get(ctx, capPVCID)) })
	step("create-disabled-exists", func() string {
		return describe(b.Create(ctx, backend.CreateRequest{ID: capPVCID, Name: capPVCName, SizeBytes: 62 << 20}))
	})
	step("activate-disabled", func() string { return describe(b.Activate(ctx, capPVCID)) })
	step("delete-foreign", func() string { return describe(nil, b.Delete(ctx, capForeign)) })
	// A mounted volume: ndctl refuses to destroy it.
	dev, err := b.Activate(ctx, capID)
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	must("mkfs.ext4", "-q", "-F", "-b", "4096", dev)
	must("mount", "-o", "dax", dev, mnt)
	step("delete-busy", func() string { return describe(nil, b.Delete(ctx, capID)) })
	must("umount", mnt)
	step("delete", func() string { return describe(nil, b.Delete(ctx, capID)) })
	step("delete-missing", func() string { return describe(nil, b.Delete(ctx, capID)) })

	// A create whose create-namespace made the namespace but "failed" (as when
	// killed by the context after the labels were written): it must be removed.
	rec.after = func(argv []string, out []byte, err error) ([]byte, error, string) {
		if len(argv) > 1 && argv[1] == "create-namespace" && err == nil {
			return out, &cexec.Error{Cmd: argv, ExitCode: -1, Err: context.Canceled},
				"create-namespace really succeeded (rc 0 above); the recorder then reported it as killed by the context"
		}
		return out, err, ""
	}
	step("create-killed", func() string {
		return describe(b.Create(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 62 << 20}))
	})
	rec.after = nil
	step("list-after-killed", func() string { return describe(b.List(ctx)) })

	// Fragmentation: three volumes, the middle one deleted.
	for _, id := range []string{capPVCID, capEphID, capOddID} {
		if err := b.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{capForeign, "scratch"} {
		must("ndctl", "destroy-namespace", "-f", devOf(n))
	}
	var frag []string
	for _, n := range capFragNames {
		id := names.VolumeID(n)
		frag = append(frag, id)
		if _, err := b.Create(ctx, backend.CreateRequest{ID: id, Name: n, SizeBytes: 1000 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Delete(ctx, frag[1]); err != nil {
		t.Fatal(err)
	}
	step("capacity-fragmented", func() string { return describe(b.Capacity(ctx)) })
	step("create-fragmented-nospace", func() string { // fits into the free sum, not into one extent
		c, _ := b.Capacity(ctx)
		rec.begin()
		return describe(b.Create(ctx, backend.CreateRequest{ID: capBigID, Name: capBigName, SizeBytes: c.MaxVolumeBytes + PfnAlign}))
	})
	for _, id := range []string{frag[0], frag[2]} {
		if err := b.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}

	// lvm on pmem.
	step("lvm-setup", func() string { return describe(nil, SetupLVM(ctx, rec, region, 50, capVG, capOwner)) })
	step("lvm-setup-again", func() string { return describe(nil, SetupLVM(ctx, rec, region, 50, capVG, capOwner)) })
	step("lvm-new", func() string {
		lb, err := NewLVM(ctx, rec, "fast-lvm", region, 50, capVG, capOwner)
		if err != nil {
			return describe(nil, err)
		}
		return describe(lb.Create(ctx, backend.CreateRequest{ID: capPVCID, Name: capPVCName, SizeBytes: 64 << 20}))
	})
	must("lvm", "vgremove", "-f", capVG)
	must("ndctl", "destroy-namespace", "-f", devOf(capVG))
	// Interrupted set-up: the namespace exists (with stale data) but is no PV yet.
	must("ndctl", "create-namespace", "-r", region, "-m", "fsdax", "-M", "dev", "-a", "2M", "-s", "1073741824", "-n", capVG,
		"-u", lvmUUID(capOwner, region, capVG))
	must("mkfs.ext4", "-q", "-F", "/dev/"+blockOf(t, region, capVG))
	step("lvm-setup-interrupted", func() string { return describe(nil, SetupLVM(ctx, rec, region, 50, capVG, capOwner)) })
	must("lvm", "vgremove", "-f", capVG)
	must("ndctl", "destroy-namespace", "-f", devOf(capVG))
	must("ndctl", "create-namespace", "-r", region, "-m", "fsdax", "-s", "1073741824", "-n", capVG)
	step("lvm-setup-foreign", func() string { return describe(nil, SetupLVM(ctx, rec, region, 50, capVG, capOwner)) })
	must("ndctl", "destroy-namespace", "-f", devOf(capVG))
	must("ndctl", "create-namespace", "-r", region, "-m", "fsdax", "-s", "1073741824", "-n", "scratch")
	step("lvm-setup-nospace", func() string { return describe(nil, SetupLVM(ctx, rec, region, 100, capVG, capOwner)) })
	must("ndctl", "destroy-namespace", "-f", "-r", region, "all")

	// ndctl missing: a PATH without it.
	missing := &recorder{r: &cexec.Host{Prefix: []string{"env", "PATH=/nonexistent"}}, sysRoot: DefaultSysfs}
	step("new-ndctl-missing", func() string {
		missing.begin()
		_, err := New(ctx, missing, capPool, region, capOwner, state)
		c := missing.take()
		rec.calls = c.Calls
		return describe(nil, err)
	})
	if _, err := exec.LookPath("ndctl"); err != nil {
		t.Fatal(errors.New("ndctl vanished"))
	}
}

func blockOf(t *testing.T, region, name string) string {
	t.Helper()
	s := sysfs{root: DefaultSysfs}
	ns, err := s.namespaces([]string{region}, name)
	if err != nil || len(ns) != 1 {
		t.Fatalf("namespace %s: %v %v", name, ns, err)
	}
	return s.blockdev(ns[0])
}
