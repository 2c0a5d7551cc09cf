// Command demo walks through carve's node driver on real parts: a volume group
// on a loop device, carve-csi --mode=node on a Unix socket, and the CSI calls
// kubelet and external-provisioner make, with the capacity table before and
// after. It cleans up everything it made. Run it with `make demo` (root).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/test/lvmtest"
)

const gib = int64(1) << 30

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo failed: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("\ndemo finished: everything it created has been removed")
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func sh(env []string, name string, args ...string) (string, error) {
	cmd := osexec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func run() error {
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root (loop devices, lvm2)")
	}
	binary := os.Getenv("CARVE_BINARY")
	if binary == "" {
		return errors.New("CARVE_BINARY is not set (make demo builds it)")
	}
	work, err := os.MkdirTemp("", "carve-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	step("Setting up a 20 GiB volume group on a loop device (sparse file)")
	img := filepath.Join(work, "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		return err
	}
	if err := os.Truncate(img, 20*gib); err != nil {
		return err
	}
	out, err := sh(nil, "losetup", "-f", "--show", img)
	if err != nil {
		return fmt.Errorf("no free loop device: %w", err)
	}
	loop := strings.TrimSpace(out)
	defer sh(nil, "losetup", "-d", loop)
	fmt.Println("    loop device:", loop)
	if err := lvmtest.WriteConfig(work, loop); err != nil {
		return err
	}
	env := lvmtest.Env(work)
	const vg = "carvedemo"
	if _, err := sh(env, "lvm", "pvcreate", "-y", loop); err != nil {
		return err
	}
	if _, err := sh(env, "lvm", "vgcreate", vg, loop); err != nil {
		return err
	}
	defer sh(env, "lvm", "vgremove", "-f", vg)
	fmt.Println("    volume group:", vg, "(metadata-only on this kernel: lvm2 writes real metadata, no device-mapper activation)")

	step("Starting carve-csi --mode=node --pool=fast=lvm:%s", vg)
	sock := filepath.Join(work, "csi.sock")
	kubelet := filepath.Join(work, "kubelet")
	if err := os.MkdirAll(kubelet, 0o750); err != nil {
		return err
	}
	drv := osexec.Command(binary, "--mode=node", "--endpoint=unix://"+sock, "--nodeid=demo-node",
		"--pool=fast=lvm:"+vg, "--kubelet-dir="+kubelet, "--v=2")
	drv.Env = append(os.Environ(), env...)
	logFile, err := os.Create(filepath.Join(work, "carve-csi.log"))
	if err != nil {
		return err
	}
	drv.Stdout, drv.Stderr = logFile, logFile
	if err := drv.Start(); err != nil {
		return err
	}
	defer func() {
		_ = drv.Process.Signal(os.Interrupt)
		_ = drv.Wait()
		b, _ := os.ReadFile(logFile.Name())
		fmt.Printf("\n==> carve-csi log (last lines)\n%s", lastLines(string(b), 8))
	}()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 100 {
			return errors.New("carve-csi did not start; see its log below")
		}
		time.Sleep(100 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ids, ctrl, node := csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	info, err := ids.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil {
		return err
	}
	ni, err := node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil {
		return err
	}
	fmt.Printf("    driver %s %s, node %s, topology %v\n", info.GetName(), info.GetVendorVersion(), ni.GetNodeId(), ni.GetAccessibleTopology().GetSegments())

	table := func(title string) error {
		c, err := ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"pool": "fast"},
			AccessibleTopology: ni.GetAccessibleTopology()})
		if err != nil {
			return err
		}
		vgs, err := sh(env, "lvm", "vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_free", vg)
		if err != nil {
			return err
		}
		fmt.Printf("    %-28s  %-10s %-6s %16s %16s %16s\n", "capacity "+title, "NODE", "POOL", "AVAILABLE", "MAX VOLUME", "vgs vg_free")
		fmt.Printf("    %-28s  %-10s %-6s %16d %16d %16s\n", "", "demo-node", "fast", c.GetAvailableCapacity(), c.GetMaximumVolumeSize().GetValue(), strings.TrimSpace(vgs))
		return nil
	}
	step("GetCapacity, as external-provisioner asks for CSIStorageCapacity objects")
	if err := table("before"); err != nil {
		return err
	}

	step("CreateVolume pvc-demo-1 (4Gi) and pvc-demo-2 (1.5Gi, rounded up to the 4 MiB extent)")
	mount := []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}
	var created []string
	for _, v := range []struct {
		name string
		size int64
	}{{"pvc-demo-1", 4 * gib}, {"pvc-demo-2", 3*gib/2 + 1}} {
		resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: v.name, VolumeCapabilities: mount,
			CapacityRange: &csi.CapacityRange{RequiredBytes: v.size}})
		if err != nil {
			return err
		}
		created = append(created, resp.GetVolume().GetVolumeId())
		fmt.Printf("    %s -> volume %s, %d bytes, topology %v\n", v.name, resp.GetVolume().GetVolumeId(),
			resp.GetVolume().GetCapacityBytes(), resp.GetVolume().GetAccessibleTopology()[0].GetSegments())
	}
	lvs, err := sh(env, "lvm", "lvs", "-o", "lv_name,lv_size,lv_tags", "--units", "b", vg)
	if err != nil {
		return err
	}
	fmt.Printf("    lvs shows:\n%s", indent(lvs))
	if err := table("after create"); err != nil {
		return err
	}

	step("The same CreateVolume again is idempotent; a conflicting one is refused")
	if _, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-demo-1", VolumeCapabilities: mount,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 4 * gib}}); err != nil {
		return err
	}
	fmt.Println("    repeat of pvc-demo-1: OK, same volume")
	_, err = ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-demo-1", VolumeCapabilities: mount,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 8 * gib}})
	fmt.Printf("    pvc-demo-1 asked again with 8Gi: %s\n", status.Code(err))
	_, err = ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-too-big", VolumeCapabilities: mount,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 100 * gib}})
	fmt.Printf("    pvc-too-big (100Gi): %s: %s\n", status.Code(err), status.Convert(err).Message())

	step("ControllerExpandVolume pvc-demo-2 to 2Gi")
	exp, err := ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: created[1],
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * gib}})
	if err != nil {
		return err
	}
	fmt.Printf("    now %d bytes, node expansion required: %v\n", exp.GetCapacityBytes(), exp.GetNodeExpansionRequired())
	if err := table("after expand"); err != nil {
		return err
	}

	step("A CSI inline volume with an attribute pod authors may not set is refused before anything is created")
	_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-demo-inline",
		TargetPath: filepath.Join(kubelet, "pods", "uid", "volumes", "kubernetes.io~csi", "scratch", "mount"), VolumeCapability: mount[0],
		VolumeContext: map[string]string{"csi.storage.k8s.io/ephemeral": "true", "size": "1Gi", "stripes": "8"}})
	fmt.Printf("    %s: %s\n", status.Code(err), status.Convert(err).Message())
	fmt.Println("    (mounting needs device-mapper; `make test-e2e` runs the inline volume create -> write -> remove path in the VM rig)")

	step("DeleteVolume both")
	for _, id := range created {
		if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			return err
		}
		fmt.Println("    deleted", id)
	}
	return table("after delete")
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("      " + l + "\n")
	}
	return b.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return indent(strings.Join(lines, "\n"))
}
