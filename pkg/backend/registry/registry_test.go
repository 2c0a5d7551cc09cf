package registry

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/backend/pmem"
	"github.com/carve-csi/carve/pkg/exec/exectest"
)

// reportedTypes are the values Backend.Type returns for pools of the
// registry's kinds and for the in-memory pool that the nodeagent's tests publish.
func reportedTypes() []string {
	return append(Types(), lvm.Type, pmem.Type, backendtest.NewMemory("m", 1, 1).Type())
}

// TestTypesFitTheCRD: NodeStorage's schema accepts every type a node can
// report. It reads the generated CRD, so a type the pattern rejects (or an
// enum that lists too few) fails here, before a node's status writes would.
func TestTypesFitTheCRD(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "deploy", "kubernetes", "base", "crds", "carve.csi.dev_nodestorages.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var crd struct {
		Spec struct {
			Versions []struct {
				Schema struct {
					OpenAPIV3Schema schema `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &crd); err != nil {
		t.Fatal(err)
	}
	if len(crd.Spec.Versions) == 0 {
		t.Fatal("the CRD has no versions")
	}
	for _, v := range crd.Spec.Versions {
		typ := v.Schema.OpenAPIV3Schema.Properties["status"].Properties["pools"].Items.Properties["type"]
		if typ.Type != "string" {
			t.Fatalf("status.pools[].type in the CRD: %+v", typ)
		}
		var pattern *regexp.Regexp
		if typ.Pattern != "" {
			pattern = regexp.MustCompile(typ.Pattern)
		}
		for _, name := range reportedTypes() {
			switch {
			case pattern != nil && !pattern.MatchString(name):
				t.Errorf("type %q does not match the CRD's pattern %s", name, typ.Pattern)
			case typ.MaxLength != nil && int64(len(name)) > *typ.MaxLength:
				t.Errorf("type %q is longer than the CRD's maxLength %d", name, *typ.MaxLength)
			case len(typ.Enum) > 0 && !contains(typ.Enum, name):
				t.Errorf("type %q is not in the CRD's enum %q", name, typ.Enum)
			}
		}
	}
}

type schema struct {
	Type       string            `json:"type"`
	Pattern    string            `json:"pattern"`
	MaxLength  *int64            `json:"maxLength"`
	Enum       []string          `json:"enum"`
	Properties map[string]schema `json:"properties"`
	Items      *schema           `json:"items"`
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestTypesAreUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range Kinds() {
		if seen[k.Type] || k.Type == "" || k.parse == nil || k.build == nil {
			t.Errorf("kind %+v: empty, incomplete or registered twice", k)
		}
		seen[k.Type] = true
		// The usage's example is a valid pool of this kind.
		name, rest, _ := strings.Cut(k.Example, "=")
		typ, source, _ := strings.Cut(rest, ":")
		if spec, err := Parse(name, typ, source); err != nil || spec.Type != k.Type || spec.String() != k.Example {
			t.Errorf("example %q of kind %s: %+v, %v", k.Example, k.Type, spec, err)
		}
	}
}

func TestUnknownTypeNamesTheKnown(t *testing.T) {
	for _, err := range []error{
		func() error { _, err := Lookup("zfs"); return err }(),
		func() error { _, err := Parse("p", "zfs", "tank"); return err }(),
		func() error {
			_, err := New(context.Background(), Env{}, Spec{Name: "p", Type: "zfs", Source: "tank"})
			return err
		}(),
	} {
		if err == nil {
			t.Fatal("type zfs accepted")
		}
		for _, typ := range Types() {
			if !strings.Contains(err.Error(), typ) {
				t.Errorf("error %q does not name type %q", err, typ)
			}
		}
	}
}

// TestNewBuildsEachKind: New hands each spec to its own backend, which runs
// its own tool first (lvm vgs; ndctl list), and a pmem pool keeps its index
// below the kubelet directory, as the node did before the registry.
func TestNewBuildsEachKind(t *testing.T) {
	for _, tc := range []struct {
		pool, tool string
		index      bool
	}{
		{"v=lvm:vg0", "lvm", false},
		{"d=pmem:region0", "ndctl", true},
		{"l=lvm-pmem:region0:50%", "ndctl", false},
		{"g=lvm:vg0:devices=/dev/vd[b-z]", "lsblk", false}, // package disks looks at the disks first
	} {
		name, rest, _ := strings.Cut(tc.pool, "=")
		typ, source, _ := strings.Cut(rest, ":")
		spec, err := Parse(name, typ, source)
		if err != nil {
			t.Fatal(err)
		}
		fake := &exectest.Fake{Handler: func(context.Context, []string) (exectest.Response, bool) {
			return exectest.Response{ExitCode: 1, Stderr: "not on this machine"}, true
		}}
		kubelet := t.TempDir()
		_, err = New(context.Background(), Env{Runner: fake, Owner: "carve.csi.dev", KubeletDir: kubelet}, spec)
		if err == nil {
			t.Errorf("%s: built a pool whose tool fails", tc.pool)
		}
		if len(fake.Log) == 0 || fake.Log[0][0] != tc.tool {
			t.Errorf("%s: commands %q, want %s first", tc.pool, fake.Log, tc.tool)
		}
		_, statErr := os.Stat(filepath.Join(kubelet, "plugins", "carve.csi.dev", "pmem", name))
		if got := statErr == nil; got != tc.index {
			t.Errorf("%s: pmem index directory exists: %v, want %v", tc.pool, got, tc.index)
		}
		if tc.tool == "ndctl" && !errors.Is(err, backend.ErrUnavailable) {
			t.Errorf("%s: failing ndctl list: %v, want ErrUnavailable", tc.pool, err)
		}
	}
}

func TestConflict(t *testing.T) {
	for _, tc := range []struct {
		a, b Spec
		ok   bool
	}{
		{Spec{Type: pmem.Type, Source: "region0"}, Spec{Type: pmem.Type, Source: "region1"}, true},
		{Spec{Type: pmem.Type, Source: "region0"}, Spec{Type: pmem.Type, Source: "region0"}, false},
		{Spec{Type: pmem.Type, Source: "all"}, Spec{Type: pmem.Type, Source: "region3"}, false},
		{Spec{Type: pmem.Type, Source: "region0"}, Spec{Type: pmem.LVMType, Source: "region0"}, true},
		{Spec{Type: lvm.Type, Source: "vg"}, Spec{Type: lvm.Type, Source: "vg"}, true},
		{Spec{Type: lvm.Type, Source: "vg", Devices: []string{"/dev/vdb"}}, Spec{Type: lvm.Type, Source: "vg"}, false},
		{Spec{Type: lvm.Type, Source: "vg"}, Spec{Type: lvm.Type, Source: "vg", Devices: []string{"/dev/vdb"}}, false},
		{Spec{Type: lvm.Type, Source: "vg", Devices: []string{"/dev/vdb"}}, Spec{Type: lvm.Type, Source: "vg2"}, true},
	} {
		if err := Conflict(tc.a, tc.b); (err == nil) != tc.ok {
			t.Errorf("Conflict(%+v, %+v) = %v", tc.a, tc.b, err)
		}
	}
}
