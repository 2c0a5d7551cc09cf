package lvm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/exec/exectest"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/lvmtest"
)

// Captures are real lvm2 runs stored under testdata/<scenario>.txt, one
// section group per command:
//
//	-- N.argv --    the command as run, a JSON array
//	-- N.rc --      exit code
//	-- N.stdout --
//	-- N.stderr --  (empty on success: exec.Host keeps stderr only on failure)
//	-- N.note --    optional remark
//
// Regenerate them (as root, lvm2 installed) with
//
//	CARVE_LVM_CAPTURE=1 go test -count=1 -run TestCapture ./pkg/backend/lvm/
//
// The unit tests replay them through exectest.Fake and require that the code
// issues exactly the recorded commands.

// Fixed names so that captures are stable; only the test's loop device is
// visible through the lvmtest configuration, so the fixed VG name is safe.
const (
	capVG    = "carvevg"
	capOwner = "carve.csi.dev"
	capPool  = "fast"
)

var (
	capName      = "pvc-1234/odd name ü=&"
	capID        = names.VolumeID(capName)
	capEphName   = "csi-4b1d0c5e6f7a8b9c"
	capEphID     = names.VolumeID(capEphName)
	capEphTarget = "/var/lib/kubelet/pods/0f3c9a52-7f0e-4d8e-9d2a-3b5a6c7d8e9f/volumes/kubernetes.io~csi/scratch/mount"
	capLongName  = strings.Repeat("long name ä/", 67)                                      // 871 bytes: carve.name.0=, .1=
	capLongID    = names.VolumeID(capLongName)                                             //
	capLongTgt   = "/var/lib/kubelet/pods/" + strings.Repeat("deep/dir-ö/", 180) + "mount" // 2k: carve.target.0..2=
	capKillName  = "pvc-killed"
	capKillID    = names.VolumeID(capKillName)
	capForeign   = "carve-foreign-0123456789abcdef" // carve-shaped, untagged
	capOther     = "carve-other-0123456789abcdef"   // tagged by another driver
	capMissing   = names.VolumeID("pvc-never-created")
)

type capCall struct {
	Argv   []string
	RC     int
	Stdout string
	Stderr string
	Note   string
}

// recorder runs commands for real and records them.
type recorder struct {
	mu    sync.Mutex
	r     exec.Runner
	calls []capCall
	// after, if set, may replace the result of a command that really ran.
	after func(argv []string, out []byte, err error) ([]byte, error, string)
	// kill, if set, says which commands are not run but reported killed.
	kill func(argv []string) bool
}

func (r *recorder) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	if r.kill != nil && r.kill(argv) {
		// Not run: the process died before it (rc -1, as exec reports a kill).
		err := &exec.Error{Cmd: argv, ExitCode: -1, Err: context.Canceled}
		r.mu.Lock()
		r.calls = append(r.calls, capCall{Argv: argv, RC: -1, Note: "not run: the recorder reported it as killed before it started"})
		r.mu.Unlock()
		return nil, err
	}
	out, err := r.r.Run(ctx, name, args...)
	c := capCall{Argv: argv, Stdout: string(out)}
	if err != nil {
		c.RC = exec.ExitCode(err)
		c.Stderr = exec.Stderr(err)
	}
	if r.after != nil {
		var note string
		out, err, note = r.after(argv, out, err)
		c.Note = note
	}
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	return out, err
}

func (r *recorder) take() []capCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	return c
}

// stepper returns a function that runs one scenario and writes the calls
// rec recorded meanwhile to dir/<name>.txt.
func stepper(t *testing.T, rec *recorder, dir string) func(name string, f func() error) {
	return func(name string, f func() error) {
		t.Helper()
		err := f()
		t.Logf("%s: err=%v", name, err)
		if err := writeCapture(filepath.Join(dir, name+".txt"), rec.take()); err != nil {
			t.Fatal(err)
		}
	}
}

func writeCapture(path string, calls []capCall) error {
	var b bytes.Buffer
	for i, c := range calls {
		var argv bytes.Buffer
		enc := json.NewEncoder(&argv) // Encode adds the newline
		enc.SetEscapeHTML(false)      // keep "&&" readable
		if err := enc.Encode(c.Argv); err != nil {
			return err
		}
		fmt.Fprintf(&b, "-- %d.argv --\n%s-- %d.rc --\n%d\n", i, argv.Bytes(), i, c.RC)
		for _, s := range []struct{ k, v string }{{"stdout", c.Stdout}, {"stderr", c.Stderr}, {"note", c.Note}} {
			if s.k == "note" && s.v == "" {
				continue
			}
			fmt.Fprintf(&b, "-- %d.%s --\n%s", i, s.k, s.v)
			if s.v != "" && !strings.HasSuffix(s.v, "\n") {
				b.WriteByte('\n')
			}
		}
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// readCapture parses a capture file.
func readCapture(path string) ([]capCall, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var calls []capCall
	for _, sec := range exectest.SplitSections(data) {
		i, field, err := exectest.CallKey(sec.Key, len(calls))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if i == len(calls) {
			calls = append(calls, capCall{})
		}
		c := &calls[i]
		switch field {
		case "argv":
			err = json.Unmarshal([]byte(sec.Body), &c.Argv)
		case "rc":
			c.RC, err = strconv.Atoi(strings.TrimSpace(sec.Body))
		case "stdout":
			c.Stdout = sec.Body
		case "stderr":
			c.Stderr = sec.Body
		case "note":
			c.Note = sec.Body
		default:
			err = fmt.Errorf("bad section %q", sec.Key)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return calls, nil
}

func TestCapture(t *testing.T) {
	if os.Getenv("CARVE_LVM_CAPTURE") == "" {
		t.Skip("set CARVE_LVM_CAPTURE=1 to re-record testdata/*.txt from real lvm2 (root, loop device)")
	}
	ctx := context.Background()
	v := lvmtest.NewVGInfo(t, 2<<30, capVG)
	rec := &recorder{r: v.Runner}
	dir := "testdata"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	step := stepper(t, rec, dir)
	bare := func(args ...string) error {
		_, err := rec.Run(ctx, "lvm", args...)
		return err
	}
	lvsArgs := append([]string{"lvs", "-o", lvColumns}, reportArgs...)

	step("new-missing-vg", func() error { _, err := New(ctx, rec, capPool, "carvemissing", capOwner); return err })
	var b *Backend
	step("new", func() (err error) { b, err = New(ctx, rec, capPool, capVG, capOwner); return err })
	if b == nil {
		t.Fatal("New failed")
	}
	step("capacity-empty", func() error { _, err := b.Capacity(ctx); return err })
	step("create", func() error {
		_, err := b.Create(ctx, backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 1 << 30})
		return err
	})
	step("create-ephemeral", func() error {
		_, err := b.Create(ctx, backend.CreateRequest{ID: capEphID, Name: capEphName, SizeBytes: 100 << 20, Ephemeral: true, TargetPath: capEphTarget})
		return err
	})
	step("create-long", func() error {
		_, err := b.Create(ctx, backend.CreateRequest{ID: capLongID, Name: capLongName, SizeBytes: 4 << 20, Ephemeral: true, TargetPath: capLongTgt})
		return err
	})
	step("create-exists", func() error {
		_, err := b.Create(ctx, backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 1 << 30})
		return err
	})
	step("create-nospace", func() error {
		_, err := b.Create(ctx, backend.CreateRequest{ID: capMissing, Name: "pvc-never-created", SizeBytes: 5 << 30})
		return err
	})
	step("foreign", func() error {
		return errors.Join(
			bare("lvcreate", "-n", "foreign", "-L", "104857600b", "-W", "y", "-y", capVG),
			bare("lvcreate", "-n", capForeign, "-L", "8388608b", "-W", "y", "-y", "--addtag", "a/b=c:d&e#f!g+h", capVG),
			bare("lvcreate", "-n", capOther, "-L", "8388608b", "-W", "y", "-y", "--addtag", "carve.owner=other.csi.dev", capVG),
		)
	})
	step("lvs-all", func() error { return bare(append(lvsArgs, capVG)...) })
	step("list", func() error { _, err := b.List(ctx); return err })
	step("get", func() error { _, err := b.Get(ctx, capID); return err })
	step("get-ephemeral", func() error { _, err := b.Get(ctx, capEphID); return err })
	step("get-long", func() error { _, err := b.Get(ctx, capLongID); return err })
	step("get-foreign", func() error { _, err := b.Get(ctx, capForeign); return err })
	step("get-other-owner", func() error { _, err := b.Get(ctx, capOther); return err })
	step("get-missing", func() error { _, err := b.Get(ctx, capMissing); return err })
	step("get-missing-vg", func() error { return bare(append(lvsArgs, "carvemissing/"+capID)...) })
	step("capacity", func() error { _, err := b.Capacity(ctx); return err })
	step("expand", func() error { _, err := b.Expand(ctx, capEphID, 200<<20); return err })
	step("expand-noop", func() error { _, err := b.Expand(ctx, capEphID, 200<<20); return err })
	step("expand-nospace", func() error { _, err := b.Expand(ctx, capEphID, 100<<30); return err })
	step("expand-foreign", func() error { _, err := b.Expand(ctx, capForeign, 100<<20); return err })
	step("expand-missing-lvextend", func() error {
		return bare("lvextend", "-L", "16777216b", capVG+"/"+capMissing)
	})
	step("activate", func() error { _, err := b.Activate(ctx, capID); return err })
	step("activate-foreign", func() error { _, err := b.Activate(ctx, capForeign); return err })
	step("delete-foreign", func() error { return b.Delete(ctx, capForeign) })
	step("delete-other-owner", func() error { return b.Delete(ctx, capOther) })
	step("delete", func() error { return b.Delete(ctx, capID) })
	step("delete-missing", func() error { return b.Delete(ctx, capID) })
	step("lvremove-missing-vg", func() error {
		return bare("lvremove", "-f", "-S", "lv_name="+capID+" && lv_tags={"+b.owner+"}", "carvemissing")
	})
	// A create whose lvcreate committed the LV but "failed" (as when killed by
	// the context after the metadata write): the backend must remove it.
	rec.after = func(argv []string, out []byte, err error) ([]byte, error, string) {
		if len(argv) > 1 && argv[1] == "lvcreate" && err == nil {
			return out, &exec.Error{Cmd: argv, ExitCode: -1, Err: context.Canceled},
				"lvcreate really succeeded (rc 0 above); the recorder then reported it as killed by the context"
		}
		return out, err, ""
	}
	step("create-killed", func() error {
		_, err := b.Create(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 8 << 20})
		return err
	})
	rec.after = nil
	step("lvs-after-killed", func() error { return bare(append(lvsArgs, capVG)...) })

	// lvm2 prints its archive advice on stdout, inside the JSON report, when
	// the archive holds more than 8192 files and the VG's backup is missing
	// (lvmteam/lvm2#137). Each command writes the backup again, so it is
	// removed before each one. (lvs, with the same setup, printed no advice.)
	archive, backup := v.EnableArchive(t)
	for i := 0; i < 9000; i++ {
		if err := os.WriteFile(filepath.Join(archive, fmt.Sprintf("%s_%05d-1.vg", capVG, i)), []byte("#\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	noBackup := func() {
		if err := os.Remove(filepath.Join(backup, capVG)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	noBackup()
	step("new-archive", func() error { _, err := New(ctx, rec, capPool, capVG, capOwner); return err })
	noBackup()
	step("capacity-archive", func() error { _, err := b.Capacity(ctx); return err })
}

// Names in the missing-PV captures.
const capMissVG = "carvemvg"

var (
	capOnLost  = names.VolumeID("pvc-on-lost-disk") // on the PV that goes missing
	capOnKept  = names.VolumeID("pvc-on-kept-disk") // on the PV that stays
	capMissNew = names.VolumeID("pvc-after-loss")
)

// TestCaptureMissingPV records a VG of two PVs after one of them went
// missing: lvm refuses lvcreate and lvextend ("Cannot change VG ... while PVs
// are missing"), vgs shows vg_missing_pv_count, lvs lv_health_status
// "partial" for the LV on the lost PV, and lvremove still works.
func TestCaptureMissingPV(t *testing.T) {
	if os.Getenv("CARVE_LVM_CAPTURE") == "" {
		t.Skip("set CARVE_LVM_CAPTURE=1 to re-record testdata/*-missing-pv.txt from real lvm2 (root, two loop devices)")
	}
	ctx := context.Background()
	m := lvmtest.NewMultiVG(t, 2, 256<<20, capMissVG)
	rec := &recorder{r: m.Runner}
	step := stepper(t, rec, "testdata")
	b, err := New(ctx, rec, capPool, capMissVG, capOwner)
	if err != nil {
		t.Fatal(err)
	}
	rec.take() // set-up, not a scenario
	for i, id := range []string{capOnKept, capOnLost} {
		args := []string{"lvcreate", "-n", id, "-L", "67108864b", "-W", "y", "-y"}
		for _, tag := range Tags(b.owner, "pvc-"+id, false, "") {
			args = append(args, "--addtag", tag)
		}
		if _, err := m.Runner.Run(ctx, "lvm", append(args, capMissVG, m.LoopDevs[i])...); err != nil {
			t.Fatal(err)
		}
	}
	m.HideDevice(t, m.LoopDevs[1])
	step("new-missing-pv", func() error { _, err := New(ctx, rec, capPool, capMissVG, capOwner); return err })
	step("capacity-missing-pv", func() error { _, err := b.Capacity(ctx); return err })
	step("create-missing-pv", func() error {
		_, err := b.Create(ctx, backend.CreateRequest{ID: capMissNew, Name: "pvc-after-loss", SizeBytes: 8 << 20})
		return err
	})
	step("expand-missing-pv", func() error { _, err := b.Expand(ctx, capOnKept, 128<<20); return err })
	step("get-missing-pv", func() error { _, err := b.Get(ctx, capOnLost); return err })
	step("list-missing-pv", func() error { _, err := b.List(ctx); return err })
	step("delete-missing-pv", func() error { return b.Delete(ctx, capOnLost) })
}

// Names in the inline-removal captures.
var (
	capInlPersist     = "csi-persistent-name" // a persistent volume whose name looks like kubelet's
	capInlPersistID   = names.VolumeID(capInlPersist)
	capInlOtherTarget = "/var/lib/kubelet/pods/11111111-2222-3333-4444-555555555555/volumes/kubernetes.io~csi/scratch/mount"
)

// TestCaptureInline records DeleteInline (lvremove with the inline volume's
// whole tag set as selection) in every case NodeUnpublishVolume meets: the
// volume of that target (short and chunked tags), another target's, a
// persistent volume of that name, LVs not carve's, and one already gone.
// Its own VG, so the main captures stay as they are:
//
//	CARVE_LVM_CAPTURE=1 go test -count=1 -run TestCaptureInline ./pkg/backend/lvm/
func TestCaptureInline(t *testing.T) {
	if os.Getenv("CARVE_LVM_CAPTURE") == "" {
		t.Skip("set CARVE_LVM_CAPTURE=1 to re-record testdata/delete-inline*.txt from real lvm2 (root, loop device)")
	}
	ctx := context.Background()
	v := lvmtest.NewVGInfo(t, 2<<30, capVG)
	rec := &recorder{r: v.Runner}
	step := stepper(t, rec, "testdata")
	b, err := New(ctx, rec, capPool, capVG, capOwner)
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []backend.CreateRequest{
		{ID: capEphID, Name: capEphName, SizeBytes: 100 << 20, Ephemeral: true, TargetPath: capEphTarget},
		{ID: capLongID, Name: capLongName, SizeBytes: 4 << 20, Ephemeral: true, TargetPath: capLongTgt},
		{ID: capInlPersistID, Name: capInlPersist, SizeBytes: 4 << 20},
	} {
		if _, err := b.Create(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"lvcreate", "-n", capForeign, "-L", "8388608b", "-W", "y", "-y", capVG},
		{"lvcreate", "-n", capOther, "-L", "8388608b", "-W", "y", "-y", "--addtag", "carve.owner=other.csi.dev", capVG},
	} {
		if _, err := v.Runner.Run(ctx, "lvm", args...); err != nil {
			t.Fatal(err)
		}
	}
	rec.take() // set-up, not a scenario
	del := func(id, name, target string) func() error {
		return func() error {
			done, err := b.DeleteInline(ctx, id, name, target)
			t.Logf("DeleteInline(%s) removed=%v", id, done)
			return err
		}
	}
	step("delete-inline-other-target", del(capEphID, capEphName, capInlOtherTarget))
	step("delete-inline-persistent", del(capInlPersistID, capInlPersist, capEphTarget))
	step("delete-inline-foreign", del(capForeign, "csi-foreign", capEphTarget))
	step("delete-inline-other-owner", del(capOther, "csi-other", capEphTarget))
	step("delete-inline", del(capEphID, capEphName, capEphTarget))
	step("delete-inline-missing", del(capEphID, capEphName, capEphTarget))
	step("delete-inline-long", del(capLongID, capLongName, capLongTgt))
	step("lvs-after-inline", func() error {
		_, err := rec.Run(ctx, "lvm", append(append([]string{"lvs", "-o", lvColumns}, reportArgs...), capVG)...)
		return err
	})
}
