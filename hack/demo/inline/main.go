// Command inline is the node half of `make demo`: a CSI inline ephemeral
// volume created, written to and removed through carve's node service, as
// kubelet drives it for a pod with `csi: {driver: carve.csi.dev,
// volumeAttributes: {size: 1Gi}}`. It needs device-mapper (a real LV is
// activated, formatted and mounted), so on kernels without it hack/demo.sh
// runs it inside the VM rig (hack/vm). It is built static (CGO_ENABLED=0).
//
// usage: inline --carve=<carve-csi> --device=<block device>
//
// It makes a volume group on the device, starts carve-csi --mode=node
// --standalone on it, and removes the volume group, the folders and the
// process again at the end, also on failure.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const (
	vg     = "carvedemo"
	pool   = "fast"
	podUID = "7a1c0de5-0000-4000-8000-00000000d340"
)

func main() {
	carve := flag.String("carve", "", "carve-csi binary")
	device := flag.String("device", "", "block device for the volume group (its contents are lost)")
	flag.Parse()
	if *carve == "" || *device == "" {
		fmt.Fprintln(os.Stderr, "usage: inline --carve=<carve-csi> --device=<block device>")
		os.Exit(2)
	}
	start := time.Now()
	if err := run(*carve, *device); err != nil {
		fmt.Printf("inline volume demo FAILED after %.1fs: %v\n", time.Since(start).Seconds(), err)
		os.Exit(1)
	}
	fmt.Printf("inline volume demo passed in %.1fs: created, mounted, written, read back, unmounted and removed\n", time.Since(start).Seconds())
}

func say(format string, args ...any) { fmt.Printf("  -- "+format+"\n", args...) }

func show(s string) {
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		fmt.Println("       " + l)
	}
}

func sh(name string, args ...string) (string, error) {
	cmd := osexec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

func run(carve, device string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (lvm2, mount)")
	}
	work, err := os.MkdirTemp("", "carve-demo-inline")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	if _, err := sh("wipefs", "-a", device); err != nil {
		return err
	}
	if _, err := sh("lvm", "pvcreate", "-y", device); err != nil {
		return err
	}
	defer func() {
		if _, e := sh("lvm", "pvremove", "-y", "-ff", device); e != nil && err == nil {
			err = e
		}
	}()
	if _, err := sh("lvm", "vgcreate", "-y", vg, device); err != nil {
		return err
	}
	defer func() {
		if _, e := sh("lvm", "vgremove", "-f", vg); e != nil && err == nil {
			err = e
		}
	}()
	vgs, err := sh("lvm", "vgs", "--units", "m", "-o", "vg_name,vg_size,vg_free", vg)
	if err != nil {
		return err
	}
	say("volume group %s on %s (device-mapper available: LVs are activated, formatted and mounted)", vg, device)
	show(vgs)

	kubelet := filepath.Join(work, "kubelet")
	sock := filepath.Join(work, "csi.sock")
	if err := os.MkdirAll(kubelet, 0o750); err != nil {
		return err
	}
	args := []string{"--mode=node", "--standalone", "--endpoint=unix://" + sock, "--nodeid=demo-node",
		"--pool=" + pool + "=lvm:" + vg, "--kubelet-dir=" + kubelet, "--v=2"}
	say("starting carve-csi %s", strings.Join(args, " "))
	logPath := filepath.Join(work, "carve-csi.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	drv := osexec.Command(carve, args...)
	drv.Stdout, drv.Stderr = logFile, logFile
	if err := drv.Start(); err != nil {
		return err
	}
	defer func() {
		_ = drv.Process.Signal(os.Interrupt)
		_ = drv.Wait()
		logFile.Close()
		if err != nil {
			b, _ := os.ReadFile(logPath)
			fmt.Println("  -- carve-csi log (last lines):")
			show(lastLines(string(b), 15))
		}
	}()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 300 {
			return errors.New("carve-csi did not listen within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ctrl, node := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	ni, err := node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil {
		return err
	}
	capacity := func() (int64, error) {
		c, err := ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"pool": pool},
			AccessibleTopology: ni.GetAccessibleTopology()})
		return c.GetAvailableCapacity(), err
	}
	cap0, err := capacity()
	if err != nil {
		return err
	}
	say("GetCapacity(pool %s): %d MiB free", pool, cap0>>20)

	// What kubelet sends for `csi: {driver: carve.csi.dev, volumeAttributes: {size: 1Gi, fsType: ext4}}`.
	volID := "csi-" + randomHex(64)
	target := filepath.Join(kubelet, "pods", podUID, "volumes", "kubernetes.io~csi", "scratch", "mount")
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil { // kubelet makes the parent
		return err
	}
	attrs := map[string]string{
		"csi.storage.k8s.io/ephemeral":           "true",
		"csi.storage.k8s.io/pod.name":            "demo-inline",
		"csi.storage.k8s.io/pod.namespace":       "default",
		"csi.storage.k8s.io/pod.uid":             podUID,
		"csi.storage.k8s.io/serviceAccount.name": "default",
		"size":                                   "1Gi",
		"fsType":                                 "ext4",
	}
	mount := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	say("NodePublishVolume %s, volume_context size=1Gi fsType=ext4 csi.storage.k8s.io/ephemeral=true", volID)
	t0 := time.Now()
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volID, TargetPath: target,
		VolumeCapability: mount, VolumeContext: attrs}); err != nil {
		return fmt.Errorf("NodePublishVolume: %w", err)
	}
	published := true
	defer func() {
		if published { // a failure half-way: still remove the volume
			_, _ = node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target})
		}
	}()
	say("published in %s: LV created, formatted, mounted at %s", time.Since(t0).Round(time.Millisecond), target)
	lvs, err := sh("lvm", "lvs", "-o", "lv_name,lv_size,lv_attr", "--units", "m", vg)
	if err != nil {
		return err
	}
	tags, err := sh("lvm", "lvs", "--noheadings", "-o", "lv_tags", vg)
	if err != nil {
		return err
	}
	show("$ lvs " + vg + "   (attr a: active, o: open, i.e. mounted)\n" + lvs + "  tags: " + shortTags(tags))
	mnt, err := sh("findmnt", "-n", "-o", "SOURCE,FSTYPE,SIZE,OPTIONS", target)
	if err != nil {
		return err
	}
	show("$ findmnt " + target + "\n" + mnt)
	cap1, err := capacity()
	if err != nil {
		return err
	}
	say("GetCapacity: %d MiB free (%+d MiB)", cap1>>20, (cap1-cap0)>>20)

	data := make([]byte, 8<<20)
	if _, err := rand.Read(data); err != nil {
		return err
	}
	file := filepath.Join(target, "hello.bin")
	if err := writeSync(file, data); err != nil {
		return err
	}
	back, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if !bytes.Equal(back, data) {
		return fmt.Errorf("read back %d bytes from %s, they differ from the %d written", len(back), file, len(data))
	}
	say("wrote 8 MiB of random data to %s, synced, read it back: identical", filepath.Base(file))

	say("NodeUnpublishVolume %s", volID)
	t0 = time.Now()
	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target}); err != nil {
		return fmt.Errorf("NodeUnpublishVolume: %w", err)
	}
	published = false
	say("unpublished in %s", time.Since(t0).Round(time.Millisecond))
	lvs, err = sh("lvm", "lvs", "--noheadings", "-o", "lv_name", vg)
	if err != nil {
		return err
	}
	if strings.TrimSpace(lvs) != "" {
		return fmt.Errorf("LVs left in %s after NodeUnpublishVolume: %s", vg, lvs)
	}
	if out, err := sh("findmnt", "-n", target); err == nil {
		return fmt.Errorf("%s is still mounted: %s", target, out)
	}
	cap2, err := capacity()
	if err != nil {
		return err
	}
	if cap2 != cap0 {
		return fmt.Errorf("GetCapacity %d after the volume is gone, %d before", cap2, cap0)
	}
	if _, err := os.Stat(target); err == nil {
		return fmt.Errorf("target %s still exists after NodeUnpublishVolume", target)
	}
	say("the LV is gone (lvs %s lists none), the target is unmounted and removed, GetCapacity back to %d MiB", vg, cap2>>20)
	return nil
}

// shortTags shortens the base64 values of carve's tags for the screen.
func shortTags(tags string) string {
	var out []string
	for _, t := range strings.Split(strings.TrimSpace(tags), ",") {
		if k, v, ok := strings.Cut(t, "="); ok && len(v) > 24 {
			t = k + "=" + v[:16] + "...(base64)"
		}
		out = append(out, t)
	}
	return strings.Join(out, " ")
}

func writeSync(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func randomHex(n int) string {
	b := make([]byte, n/2)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
