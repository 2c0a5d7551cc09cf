package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/carve-csi/carve/test/driver"
)

// benchRounds is the number of interleaved rounds (CARVE_BENCH_ROUNDS overrides).
const benchRounds = 30

// BenchmarkInlineNodePath compares an inline volume's NodePublishVolume +
// NodeUnpublishVolume through carve-csi's socket with the same steps run bare
// (issue 13): lvcreate, blkid, mkfs, mount, umount, lvremove, each a process,
// as kubelet's node would run them without a driver. ext4 at 256 MiB and xfs
// at 300 MiB (mkfs.xfs's minimum), interleaved, alternating which arm goes
// first; it prints the medians and their ratio (goal <= 1.05). Needs the
// e2e environment (test/e2e/run-vm.sh).
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
	// --v=2 logs each gRPC call with its duration, --vmodule=exec=5 each lvm command (carve's side of the
	// per-step times); mkfs, mount and blkid run through mount-utils and are not logged.
	p := driver.Start(b, nil, "--mode=node", "--nodeid="+nodeID, "--drivername="+driverName,
		"--pool=default=lvm:"+e2eVG, "--kubelet-dir="+kubelet, "--v=2", "--vmodule=exec=5")
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
		stepNames := []string{"lvcreate", "blkid", "mkfs", "mount", "umount", "lvremove"}
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
		logFrom := logSize(b, p.Log)
		carveOnce(-1) // warm up: page cache, lvm metadata
		bareOnce(-1)
		var carve, bare []time.Duration
		for i := range rounds {
			if i%2 == 0 {
				carve, bare = append(carve, carveOnce(i)), append(bare, bareOnce(i))
			} else {
				bare, carve = append(bare, bareOnce(i)), append(carve, carveOnce(i))
			}
		}
		mc, mb := benchMedian(carve), benchMedian(bare)
		fmt.Printf("inline %s %d MiB publish+unpublish: carve median %v, bare tools median %v, ratio %.2f (goal <= 1.05); %d rounds\n",
			c.fs, c.size/mib, mc.Round(time.Millisecond), mb.Round(time.Millisecond), float64(mc)/float64(mb), rounds)
		var per []string
		for _, n := range stepNames {
			per = append(per, fmt.Sprintf("%s %v", n, benchMedian(steps[n]).Round(time.Millisecond)))
		}
		fmt.Printf("inline %s bare steps, medians: %s\n", c.fs, strings.Join(per, ", "))
		lvm := lvmTimes(b, p.Log, logFrom)
		var carveLVM []string
		for _, n := range []string{"lvcreate", "lvs", "lvremove"} {
			if len(lvm[n]) > 0 {
				carveLVM = append(carveLVM, fmt.Sprintf("%s %v (%d runs)", n, benchMedian(lvm[n]).Round(time.Millisecond), len(lvm[n])))
			}
		}
		for _, n := range []string{"NodePublishVolume", "NodeUnpublishVolume"} {
			if len(lvm[n]) > 0 {
				carveLVM = append(carveLVM, fmt.Sprintf("%s %v", n, benchMedian(lvm[n]).Round(time.Millisecond)))
			}
		}
		fmt.Printf("inline %s carve's side, medians, as carve logged them: %s\n", c.fs, strings.Join(carveLVM, ", "))
		b.ReportMetric(float64(mc)/float64(mb), c.fs+"-ratio")
	}
}

var (
	execLine = regexp.MustCompile(`"exec" cmd=\["lvm","(\w+)"[^\]]*\] duration="([^"]+)"`)
	grpcLine = regexp.MustCompile(`"GRPC call" method="/csi\.v1\.\w+/(\w+)" duration="([^"]+)"`)
)

func logSize(b *testing.B, path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return st.Size()
}

// lvmTimes reads the durations of carve's lvm commands (by subcommand) and gRPC calls (by
// method) from its log, from byte from on.
func lvmTimes(b *testing.B, path string, from int64) map[string][]time.Duration {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	out := map[string][]time.Duration{}
	for _, re := range []*regexp.Regexp{execLine, grpcLine} {
		for _, m := range re.FindAllSubmatch(data[from:], -1) {
			if d, err := time.ParseDuration(string(m[2])); err == nil {
				out[string(m[1])] = append(out[string(m[1])], d)
			}
		}
	}
	return out
}

func benchMedian(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
