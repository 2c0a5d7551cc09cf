package csi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/cluster"
	"github.com/carve-csi/carve/pkg/keylock"
)

// refused is what client-go returns when nothing listens on the API server's port.
var refused = &url.Error{Op: "Get", URL: "https://127.0.0.1:6443/apis/carve.csi.dev/v1alpha1/localvolumes/x",
	Err: &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}}

// Issue 13: the API server restarting or throttling mid-burst. Every call
// ends with Unavailable (or DeadlineExceeded), never a final code, and the
// retries converge on exactly one LocalVolume per volume.
func TestClusterControllerAPIFaults(t *testing.T) {
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := corev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	ns := &v1alpha1.NodeStorage{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: v1alpha1.NodeStorageStatus{DefaultPool: "fast",
		Pools: []v1alpha1.PoolStatus{{Name: "fast", Type: "lvm", TotalBytes: 100 * gib, FreeBytes: 100 * gib, MaxVolumeBytes: 100 * gib, Healthy: true}}}}
	var mu sync.Mutex
	var fault error          // returned by every read while set
	lost := map[string]int{} // LocalVolume creates whose answer was lost, by name
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(ns, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}).
		WithStatusSubresource(&v1alpha1.LocalVolume{}).WithInterceptorFuncs(interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			mu.Lock()
			err := fault
			mu.Unlock()
			if err != nil {
				return err
			}
			return c.Get(ctx, key, obj, opts...)
		},
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if err := c.Create(ctx, obj, opts...); err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			if _, ok := obj.(*v1alpha1.LocalVolume); ok && lost[obj.GetName()] == 0 {
				// Written, but the answer never arrives: the server went away.
				lost[obj.GetName()]++
				return apierrors.NewServiceUnavailable("the API server is shutting down")
			}
			return nil
		},
	}).Build()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc := &ClusterController{Vols: &cluster.Volumes{Client: c, Poll: 5 * time.Millisecond}, Locks: &keylock.Locks{}}
	create := func(ctx context.Context, i int) (*csi.CreateVolumeResponse, error) {
		return cc.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("pvc-%d", i),
			VolumeCapabilities: []*csi.VolumeCapability{mountCap("ext4")}, CapacityRange: &csi.CapacityRange{RequiredBytes: gib},
			AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("n1")}}})
	}
	const burst = 10
	var wg sync.WaitGroup
	codesSeen := make([]codes.Code, burst)
	for i := range burst {
		wg.Go(func() {
			_, err := create(ctx, i)
			codesSeen[i] = status.Code(err)
		})
	}
	wg.Wait()
	for i, code := range codesSeen {
		if code != codes.Unavailable {
			t.Errorf("pvc-%d whose LocalVolume was written but the answer lost: %v, want Unavailable", i, code)
		}
	}

	// The API server refuses connections, then throttles: Unavailable.
	for _, f := range []error{refused, apierrors.NewTooManyRequests("slow down", 1)} {
		mu.Lock()
		fault = f
		mu.Unlock()
		if _, err := create(ctx, 0); status.Code(err) != codes.Unavailable {
			t.Errorf("create while the API server answers %v: %v, want Unavailable", f, err)
		}
		if _, err := cc.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "carve-pvc-0-0000000000000000"}); status.Code(err) != codes.Unavailable {
			t.Errorf("delete while the API server answers %v: %v, want Unavailable", f, err)
		}
	}
	mu.Lock()
	fault = nil
	mu.Unlock()

	// No node answers: the call's deadline ends it with DeadlineExceeded.
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	if _, err := create(short, 0); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("create that outlives its deadline: %v, want DeadlineExceeded", err)
	}
	cancelShort()

	// The node answers; the provisioner's retries converge, once each.
	go nodeAnswers(ctx, c, 100*gib)
	for i := range burst {
		wg.Go(func() {
			if _, err := create(ctx, i); err != nil {
				t.Errorf("retry of pvc-%d: %v", i, err)
			}
		})
	}
	wg.Wait()
	var list v1alpha1.LocalVolumeList
	if err := c.List(ctx, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != burst {
		t.Errorf("%d LocalVolumes for %d volumes", len(list.Items), burst)
	}
	for _, lv := range list.Items {
		if lv.Status.Phase != v1alpha1.PhaseReady {
			t.Errorf("LocalVolume %s in phase %q", lv.Name, lv.Status.Phase)
		}
	}
	if cluster.APIUnavailable(errors.New("some other failure")) {
		t.Error("an error that is not the API server's counts as Unavailable")
	}
}
