package pmem

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/pmem"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/benchstat"
)

// benchSamples and benchSize are the benchmark's rounds and volume size (make bench-nodepath);
// CARVE_PMEM_BENCH_SAMPLES and CARVE_PMEM_BENCH_SIZE (bytes) override them. The e2e run sets
// them small: every new namespace is zeroed whole (issue 15), 8 s/GiB under emulation, and 30
// rounds of three 1 GiB arms alone took over 12 minutes there.
var (
	benchSamples       = envInt("CARVE_PMEM_BENCH_SAMPLES", 30)
	benchSize    int64 = envInt("CARVE_PMEM_BENCH_SIZE", 1<<30)
)

func envInt(name string, def int64) int64 {
	if v, err := strconv.ParseInt(os.Getenv(name), 10, 64); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkPMEMCreateDelete compares carve's Create+Delete of a 1 GiB volume (benchSize)
// (the pmem backend, and CreateVolume+DeleteVolume over the CSI socket) with
// the bare steps: `ndctl create-namespace` with carve's arguments (a uuid
// included), the wipe Create does to the new device (pmem.Wipe: it is a
// correctness step, counted on both sides, issue 13), and `ndctl
// destroy-namespace -f`, through the same exec runner, interleaved and
// rotating which goes first. It takes at least benchSamples rounds whatever
// b.N is and prints the medians and ratios (goal <= 1.05), with the bare
// steps' medians.
func BenchmarkPMEMCreateDelete(b *testing.B) {
	reg := scratchRegion(b)
	cleanRegion(b, reg)
	ctx := context.Background()
	runner := &exec.Host{}
	be, err := pmem.New(ctx, runner, "bench", reg, "carve.csi.dev", filepath.Join(b.TempDir(), "state"))
	if err != nil {
		b.Fatal(err)
	}
	size := benchSize
	raw := pmem.RawBytes(size, ndctlList(b, reg).Align)
	carveOnce := func(i int) time.Duration {
		name := fmt.Sprintf("pvc-bench-%d", i)
		id := names.VolumeID(name)
		start := time.Now()
		if _, err := be.Create(ctx, backend.CreateRequest{ID: id, Name: name, SizeBytes: size}); err != nil {
			b.Fatal(err)
		}
		if err := be.Delete(ctx, id); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var stepCreate, stepWipe, stepDestroy []time.Duration
	bareOnce := func(i int) time.Duration {
		start := time.Now()
		out, err := runner.Run(ctx, "ndctl", "create-namespace", "-r", reg, "-m", "fsdax", "-M", "dev", "-a", "2M",
			"-s", strconv.FormatInt(raw, 10), "-n", fmt.Sprintf("bare%d", i), "-u", benchUUID(i))
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		var ns struct {
			Dev      string `json:"dev"`
			Blockdev string `json:"blockdev"`
			Size     int64  `json:"size"`
		}
		if err := json.Unmarshal(out, &ns); err != nil {
			b.Fatal(err)
		}
		if err := pmem.Wipe("/dev/"+ns.Blockdev, ns.Size); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, err := runner.Run(ctx, "ndctl", "destroy-namespace", "-f", ns.Dev); err != nil {
			b.Fatal(err)
		}
		end := time.Now()
		stepCreate, stepWipe, stepDestroy = append(stepCreate, t1.Sub(start)), append(stepWipe, t2.Sub(t1)), append(stepDestroy, end.Sub(t2))
		return end.Sub(start)
	}
	kubelet := newKubeletDir(b)
	// --vmodule=exec=5: the node logs each ndctl run with its duration, pmem=4 the steps of each
	// create; at --v=2 and up it logs each gRPC call's duration. They give carve's side of the
	// per-step times.
	// --inline-cleanup-period=0: the orphan sweep runs at start-up only; a background sweep is no
	// cost of a call, and its namespace listing would hold the region against whichever arm runs then.
	n := &node{kubelet: kubelet, args: []string{"--mode=node", "--nodeid=pmem-node", "--kubelet-dir=" + kubelet, "--standalone",
		"--inline-cleanup-period=0", "--v=3", "--vmodule=exec=5,pmem=4", "--pool=pm=pmem:" + reg}}
	n.start(b)
	csiOnce := func(i int) time.Duration {
		start := time.Now()
		resp, err := n.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("pvc-csi-bench-%d", i),
			VolumeCapabilities: []*csi.VolumeCapability{mountCap("")}, CapacityRange: &csi.CapacityRange{RequiredBytes: size}})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := n.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId()}); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	logData := func() []byte {
		data, err := os.ReadFile(n.proc.Log)
		if err != nil {
			b.Fatal(err)
		}
		return data
	}
	carveOnce(-1) // warm up
	bareOnce(-1)
	csiOnce(-1)

	samples := max(b.N, int(benchSamples))
	var carve, bare, viaCSI []time.Duration
	b.ResetTimer()
	for i := range samples {
		order := []func(){
			func() { carve = append(carve, carveOnce(i)) },
			func() { bare = append(bare, bareOnce(i)) },
			func() { viaCSI = append(viaCSI, csiOnce(i)) },
		}
		for j := range order {
			order[(i+j)%len(order)]()
		}
	}
	b.StopTimer()
	mc, mb, ms := benchstat.Median(carve), benchstat.Median(bare), benchstat.Median(viaCSI)
	fmt.Printf("pmem create+delete (%d MiB): carve backend median %v, bare ndctl+wipe median %v, ratio %.2f (goal <= 1.05), "+
		"median of the samples' carve/bare ratios %.2f; CSI CreateVolume+DeleteVolume median %v, ratio %.2f, "+
		"median of the samples' CSI/bare ratios %.2f; %d samples each\n", size>>20,
		mc.Round(time.Millisecond), mb.Round(time.Millisecond), float64(mc)/float64(mb), benchstat.PairedRatio(carve, bare),
		ms.Round(time.Millisecond), float64(ms)/float64(mb), benchstat.PairedRatio(viaCSI, bare), samples)
	fmt.Printf("pmem bare steps, medians: ndctl create-namespace %v, wipe %v, ndctl destroy-namespace %v\n",
		benchstat.Median(stepCreate).Round(time.Millisecond), benchstat.Median(stepWipe).Round(time.Millisecond), benchstat.Median(stepDestroy).Round(time.Millisecond))
	if dir := os.Getenv("CARVE_BENCH_LOG_DIR"); dir != "" { // hack/bench-vm.sh: the share
		if err := os.WriteFile(filepath.Join(dir, "carve-pmem.log"), logData(), 0o644); err != nil {
			b.Errorf("keeping carve's log: %v", err)
		}
	}
	steps := logSteps(logData())
	fmt.Printf("pmem CSI arm, carve's side, medians: CreateVolume %v (ndctl create-namespace %v, wipe %v, index records %v + %v), "+
		"DeleteVolume %v (ndctl destroy-namespace %v), as the node logged them\n",
		benchstat.Median(steps["CreateVolume"]).Round(time.Millisecond), benchstat.Median(steps["create-namespace"]).Round(time.Millisecond),
		benchstat.Median(steps["wipe"]).Round(time.Millisecond), benchstat.Median(steps["pendingRecord"]).Round(time.Millisecond),
		benchstat.Median(steps["finalRecord"]).Round(time.Millisecond),
		benchstat.Median(steps["DeleteVolume"]).Round(time.Millisecond), benchstat.Median(steps["destroy-namespace"]).Round(time.Millisecond))
	b.ReportMetric(float64(mc)/float64(mb), "ratio")
	b.ReportMetric(float64(ms)/float64(mb), "csi-ratio")
	b.ReportMetric(benchstat.PairedRatio(carve, bare), "paired-ratio")
	b.ReportMetric(benchstat.PairedRatio(viaCSI, bare), "csi-paired-ratio")
	b.ReportMetric(float64(mc)/1e6, "carve-ms")
	b.ReportMetric(float64(mb)/1e6, "bare-ms")
}

var (
	grpcLine = regexp.MustCompile(`"GRPC call" method="/csi\.v1\.\w+/(\w+)" duration="([^"]+)"`)
	ndctlRun = regexp.MustCompile(`"exec" cmd=\["ndctl","([\w-]+)"[^\]]*\] duration="([^"]+)"`)
	// createSteps is pkg/backend/pmem's "PMEM create steps" line: one duration per step name.
	createSteps = regexp.MustCompile(`"PMEM create steps" id="[^"]*" (.*)`)
	stepField   = regexp.MustCompile(`(\w+)="([^"]+)"`)
)

// logSteps reads the durations of carve-csi's gRPC calls (by method), ndctl runs (by
// subcommand) and the steps of each create (pendingRecord, createNamespace, wipe, finalRecord)
// from its log.
func logSteps(data []byte) map[string][]time.Duration {
	out := map[string][]time.Duration{}
	add := func(name, dur []byte) {
		if d, err := time.ParseDuration(string(dur)); err == nil {
			out[string(name)] = append(out[string(name)], d)
		}
	}
	for _, re := range []*regexp.Regexp{grpcLine, ndctlRun} {
		for _, m := range re.FindAllSubmatch(data, -1) {
			add(m[1], m[2])
		}
	}
	for _, m := range createSteps.FindAllSubmatch(data, -1) {
		for _, f := range stepField.FindAllSubmatch(m[1], -1) {
			add(f[1], f[2])
		}
	}
	return out
}

// benchUUID is a fixed uuid per bare round: carve's command line carries one (-u).
func benchUUID(i int) string {
	return fmt.Sprintf("b0000000-0000-4000-8000-%012d", i+1)
}
