// carve-csi is carve's one binary: the CSI node service (and, later, the
// cluster controller) for node-local LVM and PMEM volumes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/config"
	"github.com/carve-csi/carve/pkg/csi"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/mounter"
	"github.com/carve-csi/carve/pkg/volume"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type options struct {
	mode, endpoint, driverName, nodeID  string
	pools                               config.Pools
	defaultPool, kubeletDir, execPrefix string
	allowInlinePool                     bool
	startupTimeout                      time.Duration
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println("carve-csi", version)
		return
	}
	o, err := parseFlags(os.Args[1:])
	if err == nil {
		err = run(o)
	}
	if err != nil {
		klog.Flush()
		fmt.Fprintf(os.Stderr, "carve-csi: %v\n", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*options, error) {
	fs := flag.NewFlagSet("carve-csi", flag.ContinueOnError)
	klog.InitFlags(fs)
	o := &options{}
	fs.StringVar(&o.mode, "mode", "", "role of this process: node")
	fs.StringVar(&o.endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix socket)")
	fs.StringVar(&o.driverName, "drivername", "carve.csi.dev", "CSI driver name")
	fs.StringVar(&o.nodeID, "nodeid", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.Var(&o.pools, "pool", "a pool as name=lvm:<volume group>; repeatable")
	fs.StringVar(&o.defaultPool, "default-pool", "", "pool used when a request names none (default: the first --pool)")
	fs.StringVar(&o.kubeletDir, "kubelet-dir", "/var/lib/kubelet", "kubelet's root directory; the node mounts only below it")
	fs.StringVar(&o.execPrefix, "exec-prefix", "", `command prefix for storage tools, e.g. "nsenter -t 1 -m -u -i -n -p" to use the host's lvm2`)
	fs.BoolVar(&o.allowInlinePool, "allow-inline-pool", false, "let pod authors choose the pool of CSI inline volumes")
	fs.DurationVar(&o.startupTimeout, "startup-timeout", time.Minute, "limit for reading the pools at start-up")
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch o.mode {
	case "node":
	case "":
		return nil, errors.New("--mode is required (node)")
	default:
		return nil, fmt.Errorf("--mode=%q is not supported (node)", o.mode)
	}
	if o.nodeID == "" {
		return nil, errors.New("--nodeid (or $NODE_NAME) is required")
	}
	if len(o.pools) == 0 {
		return nil, errors.New("at least one --pool=name=lvm:<volume group> is required")
	}
	if st, err := os.Stat(o.kubeletDir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("--kubelet-dir %q is not a directory", o.kubeletDir)
	}
	if o.defaultPool == "" {
		o.defaultPool = o.pools[0].Name
	}
	return o, nil
}

func run(o *options) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	runner := &exec.Host{Prefix: strings.Fields(o.execPrefix)}
	startCtx, cancel := context.WithTimeout(ctx, o.startupTimeout)
	defer cancel()
	var pools []volume.Pool
	for _, p := range o.pools {
		b, err := lvm.New(startCtx, runner, p.Name, p.Source, o.driverName)
		if err != nil {
			return fmt.Errorf("pool %q: %w", p.Name, err)
		}
		pools = append(pools, volume.Pool{Name: p.Name, Backend: b})
	}
	vols, err := volume.NewManager(pools, o.defaultPool)
	if err != nil {
		return err
	}
	locks := &keylock.Locks{}
	node := &csi.Node{Vols: vols, Mount: mounter.New(), NodeID: o.nodeID, Locks: locks,
		KubeletDir: o.kubeletDir, AllowInlinePool: o.allowInlinePool}
	if err := node.CleanupOrphans(startCtx); err != nil {
		// Not fatal: the volumes stay and the next start tries again.
		klog.ErrorS(err, "Cleaning up orphaned inline volumes")
	}
	ids := &csi.Identity{Name: o.driverName, Version: version, Ready: vols.Check, Controller: true}
	ctrl := &csi.LocalController{Vols: vols, NodeID: o.nodeID, Locks: locks}

	lis, err := csi.Listen(o.endpoint)
	if err != nil {
		return err
	}
	srv := csi.NewServer(ids, ctrl, node)
	klog.InfoS("carve-csi serving", "mode", o.mode, "version", version, "endpoint", o.endpoint,
		"driver", o.driverName, "node", o.nodeID, "pools", o.pools.String(), "defaultPool", o.defaultPool)
	go func() {
		<-ctx.Done()
		klog.InfoS("Shutting down")
		srv.GracefulStop()
	}()
	return srv.Serve(lis)
}
