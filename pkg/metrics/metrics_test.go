package metrics_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/csi"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/metrics"
	"github.com/carve-csi/carve/pkg/volume"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
)

// serveCSI runs carve's node-local controller on a Unix socket with g's
// interceptor in the chain and returns a client connection to it.
func serveCSI(t *testing.T, g *metrics.GRPC, pools ...volume.Pool) *grpc.ClientConn {
	t.Helper()
	vols, err := volume.NewManager(pools, pools[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	srv := csi.NewServer(&csi.Identity{Name: "carve.csi.dev", Version: "test", Ready: vols.Check, Controller: true},
		&csi.LocalController{Vols: vols, NodeID: "node-1", Locks: &keylock.Locks{}}, nil, g.UnaryInterceptor)
	sock := filepath.Join(t.TempDir(), "csi.sock")
	lis, err := csi.Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func createReq(name string, bytes int64) *csipb.CreateVolumeRequest {
	return &csipb.CreateVolumeRequest{
		Name:          name,
		CapacityRange: &csipb.CapacityRange{RequiredBytes: bytes},
		VolumeCapabilities: []*csipb.VolumeCapability{{
			AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
			AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}},
	}
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("code %v (%v), want %v", got, err, want)
	}
}

const (
	create = "/csi.v1.Controller/CreateVolume"
	del    = "/csi.v1.Controller/DeleteVolume"
	probe  = "/csi.v1.Identity/Probe"
)

// Real gRPC calls through the server's interceptor chain are counted by
// method and code, and each is observed once in the histogram.
func TestGRPCCountsCallsByMethodAndCode(t *testing.T) {
	g := metrics.NewGRPC()
	conn := serveCSI(t, g, volume.Pool{Name: "fast", Backend: backendtest.NewMemory("fast", 10*gib, 4*mib)})
	ctrl, ids := csipb.NewControllerClient(conn), csipb.NewIdentityClient(conn)
	ctx := context.Background()

	for range 3 {
		_, err := ids.Probe(ctx, &csipb.ProbeRequest{})
		wantCode(t, err, codes.OK)
	}
	resp, err := ctrl.CreateVolume(ctx, createReq("pvc-1", 100*mib))
	wantCode(t, err, codes.OK)
	_, err = ctrl.CreateVolume(ctx, createReq("pvc-1", 100*mib)) // idempotent retry
	wantCode(t, err, codes.OK)
	_, err = ctrl.CreateVolume(ctx, createReq("", 100*mib))
	wantCode(t, err, codes.InvalidArgument)
	_, err = ctrl.CreateVolume(ctx, createReq("pvc-huge", 20*gib))
	wantCode(t, err, codes.ResourceExhausted)
	_, err = ctrl.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId()})
	wantCode(t, err, codes.OK)

	want := `
# HELP carve_csi_operations_total CSI calls served, by full gRPC method and status code (code != OK are the errors).
# TYPE carve_csi_operations_total counter
carve_csi_operations_total{code="InvalidArgument",method="/csi.v1.Controller/CreateVolume"} 1
carve_csi_operations_total{code="OK",method="/csi.v1.Controller/CreateVolume"} 2
carve_csi_operations_total{code="OK",method="/csi.v1.Controller/DeleteVolume"} 1
carve_csi_operations_total{code="OK",method="/csi.v1.Identity/Probe"} 3
carve_csi_operations_total{code="ResourceExhausted",method="/csi.v1.Controller/CreateVolume"} 1
`
	if err := testutil.CollectAndCompare(g, strings.NewReader(want), "carve_csi_operations_total"); err != nil {
		t.Fatal(err)
	}
	// Durations vary, so check each histogram's count; the bucket layout is
	// checked exactly in TestGRPCHistogramBuckets.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(g)
	counts := histogramCounts(t, reg, "carve_csi_operation_duration_seconds")
	wantCounts := map[string]uint64{
		create + " InvalidArgument": 1, create + " OK": 2, create + " ResourceExhausted": 1, del + " OK": 1, probe + " OK": 3,
	}
	if len(counts) != len(wantCounts) {
		t.Fatalf("histogram series %v, want %v", counts, wantCounts)
	}
	for k, n := range wantCounts {
		if counts[k] != n {
			t.Errorf("histogram count %q = %d, want %d (all: %v)", k, counts[k], n, counts)
		}
	}
}

// histogramCounts maps "method code" to the sample count of family name.
func histogramCounts(t *testing.T, g prometheus.Gatherer, name string) map[string]uint64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			out[l["method"]+" "+l["code"]] = m.GetHistogram().GetSampleCount()
		}
	}
	return out
}

func TestGRPCHistogramBuckets(t *testing.T) {
	g := metrics.NewGRPC()
	g.Observe(create, "OK", 3*time.Millisecond)
	g.Observe(create, "OK", 90*time.Second)
	want := `
# HELP carve_csi_operation_duration_seconds Time spent serving CSI calls, by full gRPC method and status code.
# TYPE carve_csi_operation_duration_seconds histogram
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="0.001"} 0
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="0.0025"} 0
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="0.005"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="0.01"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="0.025"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="0.05"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="0.1"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="0.25"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="0.5"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="1"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="2.5"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="5"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="10"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="30"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="60"} 1
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="120"} 2
carve_csi_operation_duration_seconds_bucket{code="OK",method="/csi.v1.Controller/CreateVolume",le="+Inf"} 2
carve_csi_operation_duration_seconds_sum{code="OK",method="/csi.v1.Controller/CreateVolume"} 90.003
carve_csi_operation_duration_seconds_count{code="OK",method="/csi.v1.Controller/CreateVolume"} 2
`
	if err := testutil.CollectAndCompare(g, strings.NewReader(want), "carve_csi_operation_duration_seconds"); err != nil {
		t.Fatal(err)
	}
}

const poolHelp = `
# HELP carve_pool_degraded 1 if the pool can be read but cannot create or grow volumes (a volume group missing a physical volume); its free and max volume bytes are then 0. The reason is in the log and in NodeStorage.
# TYPE carve_pool_degraded gauge
# HELP carve_pool_free_bytes Free bytes in the pool, as GetCapacity reports them.
# TYPE carve_pool_free_bytes gauge
# HELP carve_pool_max_volume_bytes Largest single volume the pool can still hold (GetCapacity's maximum_volume_size).
# TYPE carve_pool_max_volume_bytes gauge
# HELP carve_pool_scrape_errors_total Scrapes that could not read the pool (tool failure or timeout).
# TYPE carve_pool_scrape_errors_total counter
# HELP carve_pool_size_bytes Total size of the pool (vgs vg_size; for PMEM the size of its region or regions).
# TYPE carve_pool_size_bytes gauge
# HELP carve_pool_up 1 if the pool's capacity and volumes could be read at this scrape, 0 if not (the other carve_pool_* figures are then absent).
# TYPE carve_pool_up gauge
# HELP carve_pool_volume_bytes Sum of the sizes of the carve-owned volumes in the pool.
# TYPE carve_pool_volume_bytes gauge
# HELP carve_pool_volumes carve-owned volumes in the pool; ephemeral="true" are CSI inline volumes.
# TYPE carve_pool_volumes gauge
`

// The pool figures are the backend's own Capacity and List; a pool that
// fails is reported down and counted, without zeros, and the others stay.
func TestPoolsCollectorMatchesBackends(t *testing.T) {
	ctx := context.Background()
	fast := backendtest.NewMemory("fast", 10*gib, 4*mib)
	slow := backendtest.NewMemory("slow", 100*gib, 1*gib)
	pools := []volume.Pool{{Name: "fast", Backend: fast}, {Name: "slow", Backend: slow}}
	vols, err := volume.NewManager(pools, "fast")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []volume.CreateRequest{
		{Name: "pvc-a", Range: volume.Range{RequiredBytes: 100 * mib}},
		{Name: "pvc-b", Range: volume.Range{RequiredBytes: 1 * gib}},
		{Name: "inline-c", Range: volume.Range{RequiredBytes: 10 * mib}, Ephemeral: true, TargetPath: "/t"},
		{Name: "pvc-d", Pool: "slow", Range: volume.Range{RequiredBytes: 1}},
	} {
		if _, err := vols.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	c := metrics.NewPools(vols.Pools(), time.Minute)
	fastCap, _ := fast.Capacity(ctx)
	slowCap, _ := slow.Capacity(ctx)
	// Figures written out so that a change in the backend's arithmetic shows.
	if fastCap.FreeBytes != 10*gib-100*mib-1*gib-12*mib || slowCap.FreeBytes != 99*gib {
		t.Fatalf("backend capacity %+v %+v", fastCap, slowCap)
	}
	want := poolHelp + `
carve_pool_degraded{backend="memory",pool="fast"} 0
carve_pool_degraded{backend="memory",pool="slow"} 0
carve_pool_free_bytes{backend="memory",pool="fast"} 9546235904
carve_pool_free_bytes{backend="memory",pool="slow"} 106300440576
carve_pool_max_volume_bytes{backend="memory",pool="fast"} 9546235904
carve_pool_max_volume_bytes{backend="memory",pool="slow"} 106300440576
carve_pool_scrape_errors_total{backend="memory",pool="fast"} 0
carve_pool_scrape_errors_total{backend="memory",pool="slow"} 0
carve_pool_size_bytes{backend="memory",pool="fast"} 10737418240
carve_pool_size_bytes{backend="memory",pool="slow"} 107374182400
carve_pool_up{backend="memory",pool="fast"} 1
carve_pool_up{backend="memory",pool="slow"} 1
carve_pool_volume_bytes{backend="memory",pool="fast"} 1191182336
carve_pool_volume_bytes{backend="memory",pool="slow"} 1073741824
carve_pool_volumes{backend="memory",ephemeral="false",pool="fast"} 2
carve_pool_volumes{backend="memory",ephemeral="false",pool="slow"} 1
carve_pool_volumes{backend="memory",ephemeral="true",pool="fast"} 1
carve_pool_volumes{backend="memory",ephemeral="true",pool="slow"} 0
`
	if fastCap.FreeBytes != 9546235904 || fastCap.TotalBytes-fastCap.FreeBytes != 1191182336 || slowCap.FreeBytes != 106300440576 {
		t.Fatalf("expected figures out of date: %+v %+v", fastCap, slowCap)
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}

	slow.FailNext = backend.ErrUnavailable
	want = poolHelp + `
carve_pool_degraded{backend="memory",pool="fast"} 0
carve_pool_free_bytes{backend="memory",pool="fast"} 9546235904
carve_pool_max_volume_bytes{backend="memory",pool="fast"} 9546235904
carve_pool_scrape_errors_total{backend="memory",pool="fast"} 0
carve_pool_scrape_errors_total{backend="memory",pool="slow"} 1
carve_pool_size_bytes{backend="memory",pool="fast"} 10737418240
carve_pool_up{backend="memory",pool="fast"} 1
carve_pool_up{backend="memory",pool="slow"} 0
carve_pool_volume_bytes{backend="memory",pool="fast"} 1191182336
carve_pool_volumes{backend="memory",ephemeral="false",pool="fast"} 2
carve_pool_volumes{backend="memory",ephemeral="true",pool="fast"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	// The next scrape reads the pool again; the error count stays.
	want = `
# HELP carve_pool_scrape_errors_total Scrapes that could not read the pool (tool failure or timeout).
# TYPE carve_pool_scrape_errors_total counter
carve_pool_scrape_errors_total{backend="memory",pool="fast"} 0
carve_pool_scrape_errors_total{backend="memory",pool="slow"} 1
# HELP carve_pool_up 1 if the pool's capacity and volumes could be read at this scrape, 0 if not (the other carve_pool_* figures are then absent).
# TYPE carve_pool_up gauge
carve_pool_up{backend="memory",pool="fast"} 1
carve_pool_up{backend="memory",pool="slow"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "carve_pool_up", "carve_pool_scrape_errors_total"); err != nil {
		t.Fatal(err)
	}
}

// A degraded pool (a VG missing a PV: Capacity fails with ErrDegraded) is up,
// degraded, and offers no space; it is not counted as a scrape error.
func TestPoolsCollectorDegraded(t *testing.T) {
	fast := backendtest.NewMemory("fast", 10*gib, 4*mib)
	c := metrics.NewPools([]volume.Pool{{Name: "fast", Backend: fast}}, time.Minute)
	fast.FailNext = fmt.Errorf("lvm: volume group \"vg\" is missing 1 physical volume(s): %w", backend.ErrDegraded)
	want := poolHelp + `
carve_pool_degraded{backend="memory",pool="fast"} 1
carve_pool_free_bytes{backend="memory",pool="fast"} 0
carve_pool_max_volume_bytes{backend="memory",pool="fast"} 0
carve_pool_scrape_errors_total{backend="memory",pool="fast"} 0
carve_pool_up{backend="memory",pool="fast"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "carve_pool_degraded", "carve_pool_free_bytes",
		"carve_pool_max_volume_bytes", "carve_pool_scrape_errors_total", "carve_pool_up"); err != nil {
		t.Fatal(err)
	}
}

// hanging never answers Capacity until its context ends.
type hanging struct{ *backendtest.Memory }

func (h hanging) Capacity(ctx context.Context) (backend.Capacity, error) {
	<-ctx.Done()
	return backend.Capacity{}, ctx.Err()
}

// A pool that does not answer is reported down at the end of the timeout,
// and the other pool's figures still arrive.
func TestPoolsCollectorTimeout(t *testing.T) {
	ok := backendtest.NewMemory("ok", 10*gib, 4*mib)
	c := metrics.NewPools([]volume.Pool{
		{Name: "stuck", Backend: hanging{backendtest.NewMemory("stuck", gib, mib)}},
		{Name: "ok", Backend: ok},
	}, 500*time.Millisecond)
	want := `
# HELP carve_pool_up 1 if the pool's capacity and volumes could be read at this scrape, 0 if not (the other carve_pool_* figures are then absent).
# TYPE carve_pool_up gauge
carve_pool_up{backend="memory",pool="ok"} 1
carve_pool_up{backend="memory",pool="stuck"} 0
# HELP carve_pool_scrape_errors_total Scrapes that could not read the pool (tool failure or timeout).
# TYPE carve_pool_scrape_errors_total counter
carve_pool_scrape_errors_total{backend="memory",pool="ok"} 0
carve_pool_scrape_errors_total{backend="memory",pool="stuck"} 1
# HELP carve_pool_size_bytes Total size of the pool (vgs vg_size; for PMEM the size of its region or regions).
# TYPE carve_pool_size_bytes gauge
carve_pool_size_bytes{backend="memory",pool="ok"} 10737418240
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"carve_pool_up", "carve_pool_scrape_errors_total", "carve_pool_size_bytes"); err != nil {
		t.Fatal(err)
	}
}

func TestBuildInfo(t *testing.T) {
	want := `
# HELP carve_build_info Always 1; the version label is the running carve-csi's version.
# TYPE carve_build_info gauge
carve_build_info{version="v1.2.3"} 1
`
	if err := testutil.CollectAndCompare(metrics.BuildInfo("v1.2.3"), strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// The server serves every gatherer's families on /metrics (carve's and, in
// carve-csi, controller-runtime's), and stops on Shutdown.
func TestServerServesAllGatherers(t *testing.T) {
	g := metrics.NewGRPC()
	g.Observe(create, "Internal", time.Second)
	reg, err := metrics.NewRegistry("v9", g)
	if err != nil {
		t.Fatal(err)
	}
	// other stands for controller-runtime's registry, which has the Go and process collectors.
	other := prometheus.NewRegistry()
	other.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "other_registry_total", Help: "x"}, func() float64 { return 7 }),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if _, err := (prometheus.Gatherers{reg, other}).Gather(); err != nil {
		t.Fatalf("carve's registry and controller-runtime's collide: %v", err)
	}

	s, err := metrics.Listen("127.0.0.1:0", prometheus.Gatherers{reg, other})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	resp, err := http.Get("http://" + s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %v %v\n%s", resp.Status, err, body)
	}
	for _, line := range []string{
		`carve_build_info{version="v9"} 1`,
		`carve_csi_operations_total{code="Internal",method="/csi.v1.Controller/CreateVolume"} 1`,
		`carve_csi_operation_duration_seconds_count{code="Internal",method="/csi.v1.Controller/CreateVolume"} 1`,
		`other_registry_total 7`,
		`go_goroutines `,
		`process_start_time_seconds `,
	} {
		if !strings.Contains(string(body), "\n"+line) {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	if _, err := http.Get("http://" + s.Addr().String() + "/metrics"); err == nil {
		t.Fatal("still serving after Shutdown")
	}
}

func TestListen(t *testing.T) {
	for _, addr := range []string{"", "0"} {
		if s, err := metrics.Listen(addr, prometheus.NewRegistry()); s != nil || err != nil {
			t.Errorf("Listen(%q) = %v, %v; want no server", addr, s, err)
		}
	}
	_, err := metrics.Listen("no-port", prometheus.NewRegistry())
	if err == nil || !strings.HasPrefix(err.Error(), "--metrics-address: ") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Listen(no-port) = %v, want a one-line --metrics-address error", err)
	}
	s, err := metrics.Listen("127.0.0.1:0", prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := metrics.Listen(s.Addr().String(), prometheus.NewRegistry()); err == nil ||
		!strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("second Listen on %s = %v, want address already in use", s.Addr(), err)
	}
}

func TestServePprof(t *testing.T) {
	for _, enable := range []bool{false, true} {
		s, err := metrics.Listen("127.0.0.1:0", prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		if enable {
			s.ServePprof()
		}
		go func() { _ = s.Serve() }()
		resp, err := http.Get("http://" + s.Addr().String() + "/debug/pprof/heap")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// A heap profile is gzipped protobuf (magic 1f 8b); without ServePprof the path is unknown.
		if got := resp.StatusCode == http.StatusOK && len(body) > 2 && body[0] == 0x1f && body[1] == 0x8b; got != enable {
			t.Errorf("ServePprof %v: GET /debug/pprof/heap = %s, %d bytes", enable, resp.Status, len(body))
		}
		_ = s.Close()
	}
}

// /metrics is never gzipped, even when the scraper asks (as Prometheus does).
func TestServerDoesNotCompress(t *testing.T) {
	s, err := metrics.Listen("127.0.0.1:0", prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	go func() { _ = s.Serve() }()
	req, err := http.NewRequest(http.MethodGet, "http://"+s.Addr().String()+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := http.DefaultTransport.RoundTrip(req) // no transparent decompression
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if enc := resp.Header.Get("Content-Encoding"); resp.StatusCode != http.StatusOK || enc != "" {
		t.Fatalf("GET /metrics with Accept-Encoding gzip: %s, Content-Encoding %q; want plain text", resp.Status, enc)
	}
}

// A thin pool also reports its real data and metadata use, its threshold
// and its virtual bytes; an inactive one (use unknown) leaves the use out
// rather than reporting 0. Other pools report none of these.
func TestPoolsCollectorThin(t *testing.T) {
	thin := backendtest.Thin{Memory: backendtest.NewMemory("thin", 10*gib, 4*mib),
		Usage: backend.ThinUsage{DataBytes: 5 * gib, DataPercent: 41.5, MetadataPercent: 12.25, Active: true, VirtualBytes: 3 * gib, Overprovision: 2, ThresholdPercent: 90}}
	idle := backendtest.Thin{Memory: backendtest.NewMemory("idle", 10*gib, 4*mib),
		Usage: backend.ThinUsage{DataBytes: 5 * gib, VirtualBytes: gib, Overprovision: 1, ThresholdPercent: 80}}
	c := metrics.NewPools([]volume.Pool{{Name: "thin", Backend: thin}, {Name: "idle", Backend: idle},
		{Name: "thick", Backend: backendtest.NewMemory("thick", gib, 4*mib)}}, time.Minute)
	want := `# HELP carve_pool_thin_data_percent lvm-thin pools: the thin pool's provisioned share of its data (lvs data_percent); new volumes are refused at carve_pool_thin_threshold_percent.
# TYPE carve_pool_thin_data_percent gauge
carve_pool_thin_data_percent{backend="memory",pool="thin"} 41.5
# HELP carve_pool_thin_metadata_percent lvm-thin pools: the used share of the thin pool's metadata (lvs metadata_percent).
# TYPE carve_pool_thin_metadata_percent gauge
carve_pool_thin_metadata_percent{backend="memory",pool="thin"} 12.25
# HELP carve_pool_thin_threshold_percent lvm-thin pools: the data or metadata use at which new volumes and expansions are refused.
# TYPE carve_pool_thin_threshold_percent gauge
carve_pool_thin_threshold_percent{backend="memory",pool="idle"} 80
carve_pool_thin_threshold_percent{backend="memory",pool="thin"} 90
# HELP carve_pool_thin_virtual_bytes lvm-thin pools: the virtual sizes of every thin volume in the thin pool; carve_pool_size_bytes is the limit (data size times the overprovisioning ratio).
# TYPE carve_pool_thin_virtual_bytes gauge
carve_pool_thin_virtual_bytes{backend="memory",pool="idle"} 1.073741824e+09
carve_pool_thin_virtual_bytes{backend="memory",pool="thin"} 3.221225472e+09
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "carve_pool_thin_data_percent", "carve_pool_thin_metadata_percent",
		"carve_pool_thin_threshold_percent", "carve_pool_thin_virtual_bytes"); err != nil {
		t.Fatal(err)
	}
}
