package disks

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	osexec "os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/exec/exectest"
	"github.com/carve-csi/carve/test/loopdev"
	"github.com/carve-csi/carve/test/lvmtest"
)

// The scenarios run twice: against real tools on four loop devices
// (TestRealSetup: lsblk, wipefs, metadata-only lvm2) and replayed from the
// runs TestRealSetup recorded into testdata/ (TestSetup). Re-record with
//
//	CARVE_DISKS_CAPTURE=1 go test -count=1 -run TestRealSetup ./pkg/backend/disks/
//
// The disks have roles: A and B blank, C with an ext4 filesystem, D a PV of
// another volume group; "root" is the disk holding this machine's /.
const (
	testVG    = "carvedisks"
	testOwner = "carve.csi.dev"
)

// roles maps a role to its device path.
type roles map[string]string

func (r roles) devs(names ...string) []string {
	var out []string
	for _, n := range names {
		out = append(out, r[n])
	}
	return out
}

// rig is the real set-up; nil when replaying.
type rig struct {
	runner *exec.Host
	conf   lvmtest.Config
	dir    string
}

func (g *rig) sh(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := osexec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %q: %v: %s", name, args, err, out)
	}
}

func (g *rig) lvm(t *testing.T, args ...string) {
	t.Helper()
	if _, err := g.runner.Run(context.Background(), "lvm", args...); err != nil {
		t.Fatal(err)
	}
}

type scenario struct {
	name     string
	patterns []string // roles
	prepare  func(t *testing.T, g *rig, r roles)
	run      func(t *testing.T, ctx context.Context, runner exec.Runner, opts Options, r roles)
}

// writes returns the commands in log that change a disk.
func writes(log [][]string) [][]string {
	var out [][]string
	for _, argv := range log {
		if len(argv) > 1 && argv[0] == "lvm" && (argv[1] == "pvcreate" || argv[1] == "vgcreate" || argv[1] == "vgextend") ||
			argv[0] != "lvm" && argv[0] != "lsblk" && !(argv[0] == "wipefs" && argv[1] == "-n") {
			out = append(out, argv)
		}
	}
	return out
}

func skippedFor(res Result, dev string) string {
	for _, s := range res.Skipped {
		if s.Device == dev {
			return s.Reason
		}
	}
	return ""
}

func setup(t *testing.T, ctx context.Context, runner exec.Runner, opts Options) (Result, error) {
	t.Helper()
	res, err := Setup(ctx, runner, opts)
	t.Logf("Setup: %+v, %v", res, err)
	return res, err
}

func wantMembers(t *testing.T, res Result, want []string) {
	t.Helper()
	if !reflect.DeepEqual(res.Members, want) {
		t.Errorf("members %q, want %q", res.Members, want)
	}
}

func wantRefused(t *testing.T, err error, dev, what string) {
	t.Helper()
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), dev+" "+what) {
		t.Errorf("err = %v, want ErrRefused naming %s %q", err, dev, what)
	}
}

var scenarios = []scenario{
	{name: "create", patterns: []string{"A", "B", "C", "D"},
		run: func(t *testing.T, ctx context.Context, runner exec.Runner, opts Options, r roles) {
			res, err := setup(t, ctx, runner, opts)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Created || !reflect.DeepEqual(res.Added, r.devs("A", "B")) {
				t.Errorf("created %v added %q, want the VG created from A and B", res.Created, res.Added)
			}
			wantMembers(t, res, r.devs("A", "B"))
			if s := skippedFor(res, r["C"]); !strings.Contains(s, "ext4 signature") {
				t.Errorf("C (ext4): reason %q", s)
			}
			if s := skippedFor(res, r["D"]); !strings.Contains(s, `physical volume of volume group "othervg"`) {
				t.Errorf("D (other VG): reason %q", s)
			}
		}},
	{name: "restart", patterns: []string{"A", "B", "C", "D"},
		run: func(t *testing.T, ctx context.Context, runner exec.Runner, opts Options, r roles) {
			res, err := setup(t, ctx, runner, opts)
			if err != nil {
				t.Fatal(err)
			}
			if res.Created || len(res.Added) != 0 || len(res.Skipped) != 2 {
				t.Errorf("a second start changed something: %+v", res)
			}
			wantMembers(t, res, r.devs("A", "B"))
		}},
	{name: "mounted", patterns: []string{"A", "B", "C", "D"},
		prepare: func(t *testing.T, g *rig, r roles) {
			mnt := t.TempDir()
			g.sh(t, "mount", r["C"], mnt)
			t.Cleanup(func() { g.sh(t, "umount", mnt) })
		},
		run: func(t *testing.T, ctx context.Context, runner exec.Runner, opts Options, r roles) {
			_, err := setup(t, ctx, runner, opts)
			wantRefused(t, err, r["C"], "is mounted")
		}},
	{name: "root", patterns: []string{"A", "root"},
		run: func(t *testing.T, ctx context.Context, runner exec.Runner, opts Options, r roles) {
			_, err := setup(t, ctx, runner, opts)
			wantRefused(t, err, r["root"], "holds the root filesystem")
		}},
	{name: "foreign-orphan", patterns: []string{"A", "B", "C", "D"},
		prepare: func(t *testing.T, g *rig, r roles) {
			g.lvm(t, "vgremove", "-f", "othervg")
			g.lvm(t, "pvremove", "-y", r["D"])
			g.lvm(t, "pvcreate", r["D"]) // an orphan PV someone else made
		},
		run: func(t *testing.T, ctx context.Context, runner exec.Runner, opts Options, r roles) {
			res, err := setup(t, ctx, runner, opts)
			if err != nil {
				t.Fatal(err)
			}
			if s := skippedFor(res, r["D"]); !strings.Contains(s, "in no volume group, not made by carve") {
				t.Errorf("D (foreign orphan PV): reason %q", s)
			}
			wantMembers(t, res, r.devs("A", "B"))
		}},
	{name: "extend", patterns: []string{"A", "B", "C", "D"},
		prepare: func(t *testing.T, g *rig, r roles) {
			// C: the admin wiped it, then a start was killed after its pvcreate.
			g.sh(t, "wipefs", "-a", r["C"])
			g.lvm(t, "pvcreate", "--norestorefile", "-u", PVUUID(testOwner, testVG, r["C"]), r["C"])
			// D: the admin removed the foreign PV: a new blank disk.
			g.lvm(t, "pvremove", "-y", r["D"])
		},
		run: func(t *testing.T, ctx context.Context, runner exec.Runner, opts Options, r roles) {
			res, err := setup(t, ctx, runner, opts)
			if err != nil {
				t.Fatal(err)
			}
			if res.Created || !reflect.DeepEqual(res.Added, r.devs("C", "D")) || len(res.Skipped) != 0 {
				t.Errorf("want C (our orphan PV) and D (blank) added, nothing skipped: %+v", res)
			}
			wantMembers(t, res, r.devs("A", "B", "C", "D"))
		}},
	{name: "missing", patterns: []string{"A", "B", "C", "D"},
		prepare: func(t *testing.T, g *rig, r roles) {
			hidden := g.conf
			hidden.Devices = r.devs("A", "C", "D")
			if err := hidden.Write(g.dir); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := g.conf.Write(g.dir); err != nil {
					t.Error(err)
				}
			})
		},
		run: func(t *testing.T, ctx context.Context, runner exec.Runner, opts Options, r roles) {
			b, err := New(ctx, runner, "fast", opts)
			if err != nil {
				t.Fatal(err)
			}
			devs, err := b.Devices(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var missing, present []string
			for _, d := range devs {
				if d.Missing {
					missing = append(missing, d.UUID)
				} else {
					present = append(present, d.Path)
				}
				if d.SizeBytes <= 0 || d.FreeBytes > d.SizeBytes {
					t.Errorf("device %+v: sizes", d)
				}
			}
			if len(missing) != 1 || !reflect.DeepEqual(present, r.devs("A", "C", "D")) {
				t.Errorf("devices %+v: want A, C, D present and B missing", devs)
			}
			if _, err := b.Capacity(ctx); !errors.Is(err, backend.ErrDegraded) {
				t.Errorf("capacity with a missing disk: %v, want ErrDegraded", err)
			}
		}},
}

// TestSetup replays the recorded runs: the code must issue exactly the
// recorded commands and come to the same conclusions.
func TestSetup(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			c, err := exectest.ReadCapture(filepath.Join("testdata", sc.name+".txt"))
			if err != nil {
				t.Fatal(err)
			}
			var r roles
			var globs map[string][]string
			if err := errors.Join(json.Unmarshal([]byte(c.Extra["roles"]), &r), json.Unmarshal([]byte(c.Extra["glob"]), &globs)); err != nil {
				t.Fatal(err)
			}
			f := exectest.Replay(t, c.Calls)
			opts := Options{VG: testVG, Owner: testOwner, Patterns: r.devs(sc.patterns...),
				Glob: func(p string) ([]string, error) { return globs[p], nil }}
			sc.run(t, context.Background(), f, opts, r)
			if w := writes(f.Log); sc.name != "create" && sc.name != "extend" && len(w) > 0 {
				t.Errorf("scenario %s wrote: %q", sc.name, w)
			}
		})
	}
}

// TestRealSetup runs the scenarios on four loop devices with real lsblk,
// wipefs and lvm2 (metadata only, see lvmtest).
func TestRealSetup(t *testing.T) {
	capture := os.Getenv("CARVE_DISKS_CAPTURE") != ""
	if _, err := osexec.LookPath("lvm"); err != nil {
		t.Skip("skipping: lvm2 not installed")
	}
	r := roles{}
	for _, role := range []string{"A", "B", "C", "D"} {
		r[role] = loopdev.New(t, 64<<20)
	}
	g := &rig{dir: t.TempDir(), conf: lvmtest.Config{Devices: r.devs("A", "B", "C", "D")}}
	if err := g.conf.Write(g.dir); err != nil {
		t.Fatal(err)
	}
	g.runner = &exec.Host{Env: lvmtest.Env(g.dir)}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, vg := range []string{testVG, "othervg"} {
			_, _ = g.runner.Run(ctx, "lvm", "vgremove", "-f", vg)
		}
		_, _ = g.runner.Run(ctx, "lvm", append([]string{"pvremove", "-y", "-ff"}, r.devs("A", "B", "C", "D")...)...)
	})
	g.sh(t, "mkfs.ext4", "-q", r["C"])
	g.lvm(t, "vgcreate", "othervg", r["D"])
	if root, err := rootDisk(); err == nil {
		r["root"] = root
	} else {
		t.Logf("no root disk in lsblk (%v): the root scenario is skipped", err)
	}
	rolesJSON, _ := json.Marshal(r)
	for _, sc := range scenarios {
		ok := t.Run(sc.name, func(t *testing.T) {
			for _, p := range sc.patterns {
				if r[p] == "" {
					t.Skipf("no %s disk", p)
				}
			}
			if sc.prepare != nil {
				sc.prepare(t, g, r)
			}
			rec := &exectest.Recorder{R: g.runner}
			globs := map[string][]string{}
			opts := Options{VG: testVG, Owner: testOwner, Patterns: r.devs(sc.patterns...),
				Glob: func(p string) ([]string, error) {
					devs, err := resolveGlob(p)
					globs[p] = devs
					return devs, err
				}}
			sc.run(t, context.Background(), rec, opts, r)
			calls := rec.Take()
			if capture && !t.Failed() {
				globJSON, _ := json.Marshal(globs)
				if err := exectest.WriteCapture(filepath.Join("testdata", sc.name+".txt"), exectest.Capture{
					Calls: calls, Extra: map[string]string{"roles": string(rolesJSON), "glob": string(globJSON)},
				}); err != nil {
					t.Fatal(err)
				}
			}
		})
		if !ok {
			break // later scenarios build on this one's state
		}
	}
}

// rootDisk is the top-level device under which / is mounted.
func rootDisk() (string, error) {
	t, err := readTree(context.Background(), &exec.Host{})
	if err != nil {
		return "", err
	}
	for _, d := range t {
		if hasMount(d, "/") {
			return d.Name, nil
		}
	}
	return "", errors.New("no device holds /")
}

func hasMount(d blockDev, m string) bool {
	if d.Mountpoint != nil && *d.Mountpoint == m {
		return true
	}
	for _, c := range d.Children {
		if hasMount(c, m) {
			return true
		}
	}
	return false
}
