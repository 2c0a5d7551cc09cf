// Package metrics checks carve-csi's /metrics as Prometheus sees it: the real
// binary in --standalone node mode on a real (metadata-only) lvm2 pool,
// scraped over HTTP after CSI calls on its socket.
package metrics

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/test/driver"
	"github.com/carve-csi/carve/test/lvmtest"
)

const mib = int64(1) << 20

func createReq(name string, bytes int64) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:          name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: bytes},
		VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}},
	}
}

var listening = regexp.MustCompile(`"Metrics listening" address="([^"]+)"`)

// metricsAddr finds the address carve-csi logged; it logs it before opening
// the CSI socket, so it is there once driver.Start returns.
func metricsAddr(t *testing.T, p *driver.Process) string {
	t.Helper()
	b, err := os.ReadFile(p.Log)
	if err != nil {
		t.Fatal(err)
	}
	m := listening.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no \"Metrics listening\" line in the log:\n%s", p.Tail(30))
	}
	return string(m[1])
}

// scrape returns every sample of /metrics as series -> value, the series
// written as in the exposition format (name{labels sorted by name}).
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample line %q: %v", line, err)
		}
		if _, dup := out[line[:i]]; dup {
			t.Errorf("/metrics has series %q twice (two gatherers export it)", line[:i])
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// vgFigures returns vgs' size and free bytes: the audit does not trust carve.
func vgFigures(t *testing.T, info *lvmtest.VG) (size, free float64) {
	t.Helper()
	out, err := info.Runner.Run(context.Background(), "lvm", "vgs", "--noheadings", "--units", "b", "--nosuffix",
		"-o", "vg_size,vg_free", info.Name)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		t.Fatalf("vgs output %q", out)
	}
	size, err1 := strconv.ParseFloat(f[0], 64)
	free, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("vgs output %q", out)
	}
	return size, free
}

func TestNodeMetricsOverHTTP(t *testing.T) {
	if v, set := os.LookupEnv("GOGC"); set { // carve-node's own GOGC default is checked below
		os.Unsetenv("GOGC")
		t.Cleanup(func() { os.Setenv("GOGC", v) })
	}
	info := lvmtest.NewVGInfo(t, 1<<30, "")
	kubelet := t.TempDir()
	p := driver.Start(t, lvmtest.Env(info.ConfigDir), "--mode=node", "--nodeid=metrics-node", "--standalone",
		"--pool=fast=lvm:"+info.Name, "--kubelet-dir="+kubelet, "--metrics-address=127.0.0.1:0")
	addr := metricsAddr(t, p)

	conn, err := grpc.NewClient("unix://"+p.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctrl := csi.NewControllerClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := ctrl.CreateVolume(ctx, createReq("pvc-metrics", 64*mib)); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.CreateVolume(ctx, createReq("pvc-too-big", 4<<30)); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("CreateVolume beyond the VG: %v, want ResourceExhausted", err)
	}

	got := scrape(t, addr)
	if testing.Verbose() {
		var carve []string
		for series, v := range got {
			if strings.HasPrefix(series, "carve_") && !strings.Contains(series, "_bucket{") {
				carve = append(carve, series+" "+strconv.FormatFloat(v, 'g', -1, 64))
			}
		}
		sort.Strings(carve)
		t.Logf("carve families on /metrics:\n%s", strings.Join(carve, "\n"))
	}
	size, free := vgFigures(t, info)
	const create = `method="/csi.v1.Controller/CreateVolume"`
	want := map[string]float64{
		`carve_build_info{version="dev"}`:                                                     1,
		`carve_csi_operations_total{code="OK",` + create + `}`:                                1,
		`carve_csi_operations_total{code="ResourceExhausted",` + create + `}`:                 1,
		`carve_csi_operation_duration_seconds_count{code="OK",` + create + `}`:                1,
		`carve_csi_operation_duration_seconds_count{code="ResourceExhausted",` + create + `}`: 1,
		`carve_pool_up{backend="lvm",pool="fast"}`:                                            1,
		`carve_pool_scrape_errors_total{backend="lvm",pool="fast"}`:                           0,
		`carve_pool_size_bytes{backend="lvm",pool="fast"}`:                                    size,
		`carve_pool_free_bytes{backend="lvm",pool="fast"}`:                                    free,
		`carve_pool_max_volume_bytes{backend="lvm",pool="fast"}`:                              free, // vg_free is whole extents
		`carve_pool_volumes{backend="lvm",ephemeral="false",pool="fast"}`:                     1,
		`carve_pool_volumes{backend="lvm",ephemeral="true",pool="fast"}`:                      0,
		`carve_pool_volume_bytes{backend="lvm",pool="fast"}`:                                  float64(64 * mib),
		"go_gc_gogc_percent": 50, // carve-node's default without $GOGC (README "Scale")
	}
	for series, v := range want {
		if g, ok := got[series]; !ok {
			t.Errorf("/metrics lacks %s", series)
		} else if g != v {
			t.Errorf("%s = %v, want %v", series, g, v)
		}
	}
	if size-free != float64(64*mib) {
		t.Errorf("vgs: size %v - free %v is not the one 64 MiB volume", size, free)
	}
	// The CreateVolume calls took time on the histogram, and the runtime's
	// families come along.
	if got[`carve_csi_operation_duration_seconds_sum{code="OK",`+create+`}`] <= 0 {
		t.Errorf("CreateVolume duration sum is not positive")
	}
	for _, series := range []string{"go_goroutines", "process_start_time_seconds"} {
		if _, ok := got[series]; !ok {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	if t.Failed() {
		return
	}

	// SIGTERM stops the metrics server with the rest.
	p.Stop(syscall.SIGTERM)
	if _, err := http.Get("http://" + addr + "/metrics"); err == nil {
		t.Fatal("/metrics still answers after SIGTERM")
	}
	if !strings.Contains(p.Tail(5), `"Shutting down"`) {
		t.Fatalf("no clean shutdown in the log:\n%s", p.Tail(20))
	}
}

// A bad --metrics-address ends start-up at once with a one-line reason,
// before any pool is read (so no lvm2 is needed).
func TestStartupFailsOnBadMetricsAddress(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(driver.Binary(t), "--mode=node", "--nodeid=n", "--standalone", "--pool=fast=lvm:novg",
		"--kubelet-dir="+dir, "--endpoint=unix://"+filepath.Join(dir, "csi.sock"), "--metrics-address=no-port")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("carve-csi started with --metrics-address=no-port")
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	last := lines[len(lines)-1]
	if want := "carve-csi: --metrics-address: listen tcp: address no-port: missing port in address"; last != want {
		t.Fatalf("last line %q, want %q; output:\n%s", last, want, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "csi.sock")); err == nil {
		t.Fatal("the CSI socket was opened")
	}
}
