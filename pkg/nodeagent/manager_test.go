package nodeagent

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/volume"
)

// NewManager and SetupWithManager need no API server until the manager starts.
func TestNewManagerAndSetup(t *testing.T) {
	cfg := &rest.Config{Host: "https://127.0.0.1:1"}
	if _, err := NewManager(cfg, ManagerOptions{}); err == nil {
		t.Fatal("no node name accepted")
	}
	if _, err := NewManager(cfg, ManagerOptions{NodeName: "n", Select: "bogus"}); err == nil {
		t.Fatal("unknown selection accepted")
	}
	// (A selective cache asks the API server for the REST mapping at once, so
	// only its options are checked here.)
	// The Node's metadata is watched by name whatever the selection (issue 13).
	for sel, want := range map[Selection]string{SelectAll: "", SelectByLabel: "label carve.csi.dev/node=n", SelectByField: "field spec.nodeName=n"} {
		co, err := cacheOptions(ManagerOptions{NodeName: "n", Select: sel})
		wantLen := 3 // LocalVolumes, LocalSnapshots, the Node
		if sel == SelectAll {
			wantLen = 1
		}
		if err != nil || len(co.ByObject) != wantLen {
			t.Fatalf("%q: %+v %v", sel, co, err)
		}
		for o, bo := range co.ByObject {
			got := ""
			if bo.Label != nil {
				got = "label " + bo.Label.String()
			}
			if bo.Field != nil {
				got = "field " + bo.Field.String()
			}
			w := want
			if m, ok := o.(*metav1.PartialObjectMetadata); ok && m.GroupVersionKind() == corev1.SchemeGroupVersion.WithKind("Node") {
				w = "field metadata.name=n"
			} else if _, ok := o.(*metav1.PartialObjectMetadata); ok {
				t.Fatalf("%q: metadata cache of %v", sel, o.GetObjectKind().GroupVersionKind())
			}
			if got != w {
				t.Fatalf("%q: %T selector %q, want %q", sel, o, got, w)
			}
		}
	}
	// (Every selection now caches the Node by name, so NewManager itself
	// needs the API server: test/integration runs it.)
	// Controller names are unique per process; -count=N sets up again.
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	skip := true
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: &skip}})
	if err != nil {
		t.Fatal(err)
	}
	vols, err := volume.NewManager([]volume.Pool{{Name: "p", Backend: backendtest.NewMemory("p", 1<<30, 1<<20)}}, "p")
	if err != nil {
		t.Fatal(err)
	}
	if err := (&Agent{NodeName: "n", Vols: vols}).SetupWithManager(mgr); err == nil {
		t.Fatal("missing Locks accepted")
	}
	a := &Agent{NodeName: "n", Vols: vols, Locks: &keylock.Locks{}}
	if err := a.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	if a.Client == nil || a.APIReader == nil {
		t.Fatal("Client or APIReader not taken from the manager")
	}
}

// The node's cache keeps LocalVolumes without managedFields, whatever the selection.
func TestCacheStripsManagedFields(t *testing.T) {
	for _, sel := range []Selection{SelectAll, SelectByLabel, SelectByField} {
		co, err := cacheOptions(ManagerOptions{NodeName: "n", Select: sel})
		if err != nil {
			t.Fatal(err)
		}
		if co.DefaultTransform == nil {
			t.Fatalf("%q: no transform: cached LocalVolumes keep their managedFields", sel)
		}
		lv := &v1alpha1.LocalVolume{ObjectMeta: metav1.ObjectMeta{Name: "lv", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "carve-csi"}}}}
		out, err := co.DefaultTransform(lv)
		if err != nil {
			t.Fatal(err)
		}
		got := out.(*v1alpha1.LocalVolume)
		if got.ManagedFields != nil || got.Name != "lv" {
			t.Fatalf("%q: transformed object %+v", sel, got.ObjectMeta)
		}
	}
}
