package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/carve-csi/carve/test/benchstat"
	"github.com/carve-csi/carve/test/driver"
)

// benchRounds is the number of interleaved rounds (CARVE_BENCH_ROUNDS overrides).
const benchRounds = 30

// BenchmarkInlineNodePath compares an inline volume's NodePublishVolume +
// NodeUnpublishVolume through carve-csi's socket with the same steps run bare
// (issue 13): lvcreate, blkid, mkfs, mount, umount, lvremove, each a process,
// as kubelet's node would run them without a driver. ext4 at 256 MiB and xfs
// at 300 MiB (mkfs.xfs's minimum), interleaved, alternating which arm goes
// first; it prints the medians and their ratio (goal <= 1.05), the median of
// the rounds' own ratios, each bare step's median and carve's side of the same
// steps from its log. Needs the e2e environment (test/e2e/run-vm.sh).
func BenchmarkInlineNodePath(b *testing.B) {
	if skipReason != "" {
		if os.Getenv("CARVE_E2E_REQUIRE") == "1" {
			b.Fatalf("CARVE_E2E_REQUIRE=1 but the benchmark cannot run: %s", skipReason)
		}
		b.Skip(skipReason)
	}
	rounds := benchRounds
	if v, err := strconv.Atoi(os.Getenv("CARVE_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	kubelet := filepath.Join(b.TempDir(), "kubelet")
	for _, d := range []string{"pods", "plugins"} {
		if err := os.MkdirAll(filepath.Join(kubelet, d), 0o750); err != nil {
			b.Fatal(err)
		}
	}
	// --v=2 logs each gRPC call with its duration, --vmodule exec=5 each lvm command and toollog=4
	// each blkid, mkfs, mount and umount (carve's side of the per-step times).
	// --inline-cleanup-period=0: the orphan sweep runs once, at start-up, not every minute in the
	// middle of the rounds. A background sweep is no cost of a publish or an unpublish, and its
	// `lvs` (1.5-2 s under TCG) holds the VG lock against whichever arm's lvcreate or lvremove runs
	// then, which moved either arm's median by chance.
	p := driver.Start(b, nil, "--mode=node", "--nodeid="+nodeID, "--drivername="+driverName,
		"--pool=default=lvm:"+e2eVG, "--kubelet-dir="+kubelet, "--inline-cleanup-period=0",
		"--v=2", "--vmodule=exec=5,toollog=4")
	conn, err := grpc.NewClient("unix://"+p.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	node := csi.NewNodeClient(conn)
	for _, c := range []struct {
		fs   string
		size int64
	}{{"ext4", 256 * mib}, {"xfs", 300 * mib}} {
		target := func(arm string, i int) string {
			t := filepath.Join(kubelet, "pods", fmt.Sprintf("bench-%s-%s-%d", c.fs, arm, i), "volumes", "kubernetes.io~csi", "v", "mount")
			if err := os.MkdirAll(filepath.Dir(t), 0o750); err != nil {
				b.Fatal(err)
			}
			return t
		}
		carveOnce := func(i int) time.Duration {
			id, tgt := fmt.Sprintf("csi-bench-%s-%d", c.fs, i), target("carve", i)
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			start := time.Now()
			if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: tgt,
				VolumeCapability: mountCap(c.fs, rwo), VolumeContext: inlineCtx(map[string]string{"size": strconv.FormatInt(c.size, 10), "fsType": c.fs})}); err != nil {
				b.Fatalf("NodePublishVolume %s: %v", id, err)
			}
			if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: tgt}); err != nil {
				b.Fatalf("NodeUnpublishVolume %s: %v", id, err)
			}
			return time.Since(start)
		}
		steps := map[string][]time.Duration{} // the bare arm's per-step times
		stepNames := []string{"lvcreate", "blkdiscard", "blkid", "mkfs", "mount", "umount", "lvremove"}
		bareOnce := func(i int) time.Duration {
			lv, tgt := fmt.Sprintf("bench-bare-%s-%d", c.fs, i), target("bare", i)
			dev := "/dev/" + e2eVG + "/" + lv
			mkfs := []string{"mkfs.ext4", "-F", "-m0", dev}
			if c.fs == "xfs" {
				mkfs = []string{"mkfs.xfs", "-f", dev}
			}
			if err := os.MkdirAll(tgt, 0o750); err != nil {
				b.Fatal(err)
			}
			mountOpts := "defaults" // carve's options (mounter.mountFSOptions)
			if c.fs == "xfs" {
				mountOpts = "nouuid,defaults"
			}
			start := time.Now()
			for k, argv := range [][]string{
				{"lvm", "lvcreate", "-n", lv, "-L", strconv.FormatInt(c.size, 10) + "b", "-W", "y", "-y", "--addtag", "carve.bench=" + lv, e2eVG},
				// carve zeroes every new LV (README, "No previous tenant's data"): a correctness
				// step, counted on both sides as PMEM's wipe is. carve's lvcreate also records the
				// filesystem UUID its mkfs then uses (the proof of the zeroing after a crash: no
				// lvchange since issue 13); the bare mkfs picks its own, at the same cost.
				{"blkdiscard", "-z", dev},
				{"blkid", "-p", "-s", "TYPE", "-s", "PTTYPE", "-o", "export", dev}, // as mount-utils probes; exit 2: nothing found
				mkfs,
				{"mount", "-t", c.fs, "-o", mountOpts, dev, tgt},
				{"umount", tgt},
				{"lvm", "lvremove", "-f", e2eVG + "/" + lv},
			} {
				t0 := time.Now()
				cmd := exec.Command(argv[0], argv[1:]...)
				cmd.Env = append(os.Environ(), "LC_ALL=C")
				if out, err := cmd.CombinedOutput(); err != nil && !(argv[0] == "blkid" && cmd.ProcessState.ExitCode() == 2) {
					b.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
				}
				steps[stepNames[k]] = append(steps[stepNames[k]], time.Since(t0))
			}
			return time.Since(start)
		}
		carveOnce(-1) // warm up: page cache, lvm metadata
		bareOnce(-1)
		steps = map[string][]time.Duration{}
		logFrom := logSize(b, p.Log)
		var carve, bare []time.Duration
		for i := range rounds {
			if i%2 == 0 {
				carve, bare = append(carve, carveOnce(i)), append(bare, bareOnce(i))
			} else {
				bare, carve = append(bare, bareOnce(i)), append(carve, carveOnce(i))
			}
		}
		mc, mb := benchstat.Median(carve), benchstat.Median(bare)
		paired := benchstat.PairedRatio(carve, bare)
		fmt.Printf("inline %s %d MiB publish+unpublish: carve median %v, bare tools median %v, ratio %.2f (goal <= 1.05), "+
			"median of the rounds' carve/bare ratios %.2f; %d rounds\n",
			c.fs, c.size/mib, mc.Round(time.Millisecond), mb.Round(time.Millisecond), float64(mc)/float64(mb), paired, rounds)
		var per []string
		for _, n := range stepNames {
			per = append(per, fmt.Sprintf("%s %v", n, benchstat.Median(steps[n]).Round(time.Millisecond)))
		}
		fmt.Printf("inline %s bare steps, medians: %s\n", c.fs, strings.Join(per, ", "))
		logged := carveTimes(b, p.Log, logFrom)
		var side []string
		for _, n := range append(stepNames, "lvchange", "lvs") {
			if len(logged[n]) > 0 {
				side = append(side, fmt.Sprintf("%s %v (%d runs)", n, benchstat.Median(logged[n]).Round(time.Millisecond), len(logged[n])))
			}
		}
		for _, n := range []string{"NodePublishVolume", "NodeUnpublishVolume"} {
			if len(logged[n]) > 0 {
				side = append(side, fmt.Sprintf("%s %v (own work %v)", n, benchstat.Median(logged[n]).Round(time.Millisecond),
					benchstat.Median(logged[n+" own"]).Round(time.Millisecond)))
			}
		}
		fmt.Printf("inline %s carve's side, medians, as carve logged them: %s\n", c.fs, strings.Join(side, ", "))
		b.ReportMetric(float64(mc)/float64(mb), c.fs+"-ratio")
		b.ReportMetric(paired, c.fs+"-paired-ratio")
	}
	keepLog(b, p.Log, "carve-inline.log")
}

// keepLog copies carve's log to $CARVE_BENCH_LOG_DIR, if set (hack/bench-vm.sh: the share), so
// that the per-call times can be read after the VM is gone.
func keepLog(b *testing.B, path, name string) {
	dir := os.Getenv("CARVE_BENCH_LOG_DIR")
	if dir == "" {
		return
	}
	data, err := os.ReadFile(path)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, name), data, 0o644)
	}
	if err != nil {
		b.Errorf("keeping carve's log: %v", err)
	}
}

var (
	// pkg/exec's line for every tool it runs (lvm by subcommand: "lvm","lvcreate" is lvcreate) and
	// pkg/mounter's for the tools it runs.
	execLine = regexp.MustCompile(`"exec" cmd=\[(?:"lvm",)?"([\w.-]+)"[^\]]*\] duration="([^"]+)"`)
	toolLine = regexp.MustCompile(`"Tool ran" cmd=\["([\w.-]+)"[^\]]*\] duration="([^"]+)"`)
	grpcLine = regexp.MustCompile(`"GRPC call" method="/csi\.v1\.\w+/(\w+)" duration="([^"]+)"`)
)

func logSize(b *testing.B, path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return st.Size()
}

// carveTimes reads carve's log from byte from on: the durations of the tools it ran (lvm by
// subcommand, blkdiscard, and blkid, mkfs, mount, umount from its mounter) and of its gRPC calls (by
// method), and per call its own work, "<method> own": the call's duration less the tools it ran
// (the calls are serial here, so a call's tools are those logged since the previous call).
func carveTimes(tb testing.TB, path string, from int64) map[string][]time.Duration {
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string][]time.Duration{}
	var tools time.Duration
	for _, line := range strings.Split(string(data[from:]), "\n") {
		for _, re := range []*regexp.Regexp{execLine, toolLine, grpcLine} {
			m := re.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			d, err := time.ParseDuration(m[2])
			if err != nil {
				tb.Fatalf("carve's log: %q: %v", line, err)
			}
			name := m[1]
			if strings.HasPrefix(name, "mkfs.") {
				name = "mkfs"
			}
			out[name] = append(out[name], d)
			if re == grpcLine {
				out[name+" own"] = append(out[name+" own"], d-tools)
				tools = 0
			} else {
				tools += d
			}
		}
	}
	return out
}
