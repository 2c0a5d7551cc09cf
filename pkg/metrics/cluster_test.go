package metrics_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/metrics"
)

func lv(name string, phase v1alpha1.LocalVolumePhase) client.Object {
	return &v1alpha1.LocalVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: v1alpha1.LocalVolumeStatus{Phase: phase}}
}

func TestLocalVolumesByPhase(t *testing.T) {
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	var fail error
	c := fake.NewClientBuilder().WithScheme(s).WithStatusSubresource(&v1alpha1.LocalVolume{}).
		WithObjects(lv("a", v1alpha1.PhaseReady), lv("b", v1alpha1.PhaseReady), lv("c", ""), lv("d", v1alpha1.PhaseFailed),
			lv("e", v1alpha1.PhaseReady)).
		WithInterceptorFuncs(interceptor.Funcs{List: func(ctx context.Context, c client.WithWatch, l client.ObjectList, o ...client.ListOption) error {
			if fail != nil {
				return fail
			}
			return c.List(ctx, l, o...)
		}}).Build()
	col := metrics.NewLocalVolumes(c, 0)
	want := `
# HELP carve_localvolumes LocalVolume objects in the cluster by status phase (no phase yet counts as Pending).
# TYPE carve_localvolumes gauge
carve_localvolumes{phase="Failed"} 1
carve_localvolumes{phase="Pending"} 1
carve_localvolumes{phase="Ready"} 3
# HELP carve_localvolumes_scrape_errors_total Scrapes that could not list LocalVolumes (carve_localvolumes is then absent).
# TYPE carve_localvolumes_scrape_errors_total counter
carve_localvolumes_scrape_errors_total 0
`
	if err := testutil.CollectAndCompare(col, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	fail = errors.New("cache not started")
	want = `
# HELP carve_localvolumes_scrape_errors_total Scrapes that could not list LocalVolumes (carve_localvolumes is then absent).
# TYPE carve_localvolumes_scrape_errors_total counter
carve_localvolumes_scrape_errors_total 1
`
	if err := testutil.CollectAndCompare(col, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
