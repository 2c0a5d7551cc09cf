// carve-csi is carve's one binary: the CSI node service (--mode=node) and the
// cluster controller (--mode=controller) for node-local volumes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/carve-csi/carve/pkg/backend/registry"
	"github.com/carve-csi/carve/pkg/cluster"
	"github.com/carve-csi/carve/pkg/config"
	"github.com/carve-csi/carve/pkg/csi"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/kubeclient"
	"github.com/carve-csi/carve/pkg/metrics"
	"github.com/carve-csi/carve/pkg/mounter"
	"github.com/carve-csi/carve/pkg/nodeagent"
	"github.com/carve-csi/carve/pkg/volume"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type options struct {
	mode, endpoint, driverName, nodeID  string
	pools                               config.Pools
	defaultPool, kubeletDir, execPrefix string
	allowInlinePool, attach             bool
	kubeconfig, metricsAddr             string
	pprof                               bool
	standalone                          bool
	startupTimeout, resync              time.Duration
	inlineCleanup                       time.Duration
	kubeAPIQPS                          float64
	kubeAPIBurst                        int
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println("carve-csi", version)
		return
	}
	o, err := parseFlags(os.Args[1:])
	crlog.SetLogger(klog.NewKlogr())
	if err == nil {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		if o.mode == "node" {
			err = runNode(ctx, o)
		} else {
			err = runController(ctx, o)
		}
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
	fs.StringVar(&o.mode, "mode", "", "role of this process: node or controller")
	fs.StringVar(&o.endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix socket)")
	fs.StringVar(&o.driverName, "drivername", "carve.csi.dev", "CSI driver name")
	fs.StringVar(&o.nodeID, "nodeid", os.Getenv("NODE_NAME"), "node mode: this node's name (default $NODE_NAME)")
	fs.Var(&o.pools, "pool", "node mode: a pool as "+registry.Usage()+"; repeatable")
	fs.StringVar(&o.defaultPool, "default-pool", "", "node mode: pool used when a request names none (default: the first --pool)")
	fs.StringVar(&o.kubeletDir, "kubelet-dir", "/var/lib/kubelet", "node mode: kubelet's root directory; the node mounts only below it")
	fs.StringVar(&o.execPrefix, "exec-prefix", "", `node mode: command prefix for storage tools, e.g. "nsenter -t 1 -m -u -i -n -p" to use the host's lvm2`)
	fs.BoolVar(&o.allowInlinePool, "allow-inline-pool", false, "node mode: let pod authors choose the pool of CSI inline volumes")
	fs.BoolVar(&o.standalone, "standalone", false, "node mode: serve CSI only, without the Kubernetes API (no LocalVolumes, no NodeStorage); the default outside a cluster without --kubeconfig")
	fs.BoolVar(&o.attach, "attach", false, "controller mode: offer ControllerPublish/Unpublish (for deployments that run external-attacher)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster configuration)")
	fs.StringVar(&o.metricsAddr, "metrics-address", "", `address to serve Prometheus metrics on at /metrics, e.g. ":8080" (default "": none)`)
	fs.BoolVar(&o.pprof, "pprof", false, "also serve Go's runtime profiles (heap, goroutines, CPU) at /debug/pprof/ on --metrics-address")
	fs.DurationVar(&o.startupTimeout, "startup-timeout", defaultStartupTimeout, "node mode: limit for reading (or creating) the pools and cleaning up orphans at start-up; keep it under what the startup probe allows")
	fs.DurationVar(&o.resync, "capacity-resync", time.Minute, "node mode: period of the NodeStorage refresh besides every change")
	fs.DurationVar(&o.inlineCleanup, "inline-cleanup-period", time.Minute, "node mode: period of the sweep that removes inline volumes whose pod is gone (unmounted target, pod directory gone); 0: only at start-up")
	fs.Float64Var(&o.kubeAPIQPS, "kube-api-qps", kubeclient.DefaultQPS, "queries per second to the Kubernetes API server (client-side limit; the server's priority and fairness still applies)")
	fs.IntVar(&o.kubeAPIBurst, "kube-api-burst", kubeclient.DefaultBurst, "burst of queries to the Kubernetes API server above --kube-api-qps")
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.pprof && (o.metricsAddr == "" || o.metricsAddr == "0") {
		return nil, errors.New("--pprof needs --metrics-address (the profiles are served on it)")
	}
	if o.kubeAPIQPS <= 0 || o.kubeAPIBurst <= 0 {
		return nil, fmt.Errorf("--kube-api-qps (%g) and --kube-api-burst (%d) must be positive", o.kubeAPIQPS, o.kubeAPIBurst)
	}
	switch o.mode {
	case "controller":
		return o, nil
	case "node":
	case "":
		return nil, errors.New("--mode is required (node or controller)")
	default:
		return nil, fmt.Errorf("--mode=%q is not supported (node or controller)", o.mode)
	}
	if o.nodeID == "" {
		return nil, errors.New("--nodeid (or $NODE_NAME) is required")
	}
	if len(o.pools) == 0 {
		return nil, fmt.Errorf("at least one --pool is required (%s)", registry.Usage())
	}
	if st, err := os.Stat(o.kubeletDir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("--kubelet-dir %q is not a directory", o.kubeletDir)
	}
	if o.defaultPool == "" {
		o.defaultPool = o.pools[0].Name
	}
	return o, nil
}

// startMetrics opens --metrics-address first, so that a bad address fails
// start-up before any tool runs. The server gathers carve's registry and
// controller-runtime's (client-go, workqueue, reconciler metrics), whose own
// server stays off so the port is served once. ms is nil without an address.
func startMetrics(o *options) (grpcMetrics *metrics.GRPC, reg *prometheus.Registry, ms *metrics.Server, err error) {
	grpcMetrics = metrics.NewGRPC()
	reg, err = metrics.NewRegistry(version, grpcMetrics)
	if err != nil {
		return nil, nil, nil, err
	}
	ms, err = metrics.Listen(o.metricsAddr, prometheus.Gatherers{reg, crmetrics.Registry})
	if err != nil {
		return nil, nil, nil, err
	}
	if ms != nil && o.pprof {
		ms.ServePprof()
	}
	if ms != nil {
		// Logged before the CSI socket opens, so whoever waits for the socket
		// finds the address (tests listen on port 0).
		klog.InfoS("Metrics listening", "address", ms.Addr().String(), "path", "/metrics")
	}
	return grpcMetrics, reg, ms, nil
}

// defaultStartupTimeout bounds carve-node's start-up: reading every pool,
// creating a thin pool that is missing (lvcreate --type thin-pool) and the
// orphan cleanup. On a busy node each lvm call can take tens of seconds: the
// real-node rig with a slow VM saw lvcreate of the thin pool killed by the
// old 1-minute limit, carve-node exit and restart twice, while the DaemonSet's
// startup probe allows 300 s (60 x 5 s). It stays under that, so that a start
// that really hangs ends with this error, not a probe's kill.
const defaultStartupTimeout = 270 * time.Second

// nodeGCPercent is carve-node's GOGC unless $GOGC is set: the GC runs when
// the heap has grown by half its live size instead of doubled. carve-node's
// live heap is small (about 4.5 MiB with 100 volumes, most of it the API
// types' registrations) and its allocation rate low, so this costs little CPU
// and keeps about 2 MiB less garbage resident (README, "Scale"). GOMEMLIMIT
// stays unset: a soft limit near the live heap makes the GC run back to back
// instead of failing, and the heap grows with the node's volumes.
const nodeGCPercent = 50

func runNode(ctx context.Context, o *options) error {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(nodeGCPercent)
	}
	grpcMetrics, reg, ms, err := startMetrics(o)
	if err != nil {
		return err
	}
	if ms != nil {
		defer ms.Close() // on start-up errors; after serve it is a no-op
	}
	runner := &exec.Host{Prefix: strings.Fields(o.execPrefix)}
	startCtx, cancel := context.WithTimeout(ctx, o.startupTimeout)
	defer cancel()
	var pools []volume.Pool
	env := registry.Env{Runner: runner, Owner: o.driverName, KubeletDir: o.kubeletDir}
	for _, p := range o.pools {
		b, err := registry.New(startCtx, env, p)
		if err != nil {
			if errors.Is(startCtx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("pool %q: not ready within --startup-timeout=%v: %w", p.Name, o.startupTimeout, err)
			}
			return fmt.Errorf("pool %q: %w", p.Name, err)
		}
		pools = append(pools, volume.Pool{Name: p.Name, Backend: b})
	}
	vols, err := volume.NewManager(pools, o.defaultPool)
	if err != nil {
		return err
	}
	if err := reg.Register(metrics.NewPools(vols.Pools(), 0)); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	locks := &keylock.Locks{}
	node := &csi.Node{Vols: vols, Mount: mounter.New(), NodeID: o.nodeID, Locks: locks,
		KubeletDir: o.kubeletDir, AllowInlinePool: o.allowInlinePool}
	ctrlSvc := &csi.LocalController{Vols: vols, NodeID: o.nodeID, Locks: locks}

	if !o.standalone && o.kubeconfig == "" && os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		klog.InfoS("No --kubeconfig and not in a cluster: serving CSI only, without LocalVolumes and NodeStorage")
		o.standalone = true
	}
	var mgr ctrl.Manager
	if !o.standalone {
		cfg, err := kubeclient.Config(o.kubeconfig, float32(o.kubeAPIQPS), o.kubeAPIBurst)
		if err != nil {
			return err
		}
		mgr, err = nodeagent.NewManager(cfg, nodeagent.ManagerOptions{NodeName: o.nodeID, Select: nodeagent.SelectByLabel})
		if err != nil {
			return err
		}
		agent := &nodeagent.Agent{NodeName: o.nodeID, Vols: vols, Locks: locks, Resync: o.resync}
		if err := agent.SetupWithManager(mgr); err != nil {
			return err
		}
		node.Changed, ctrlSvc.Changed = agent.Changed, agent.Changed
	}
	if err := node.CleanupOrphans(startCtx); err != nil {
		// Not fatal: the volumes stay and the next start tries again.
		klog.ErrorS(err, "Cleaning up orphaned inline volumes")
	}
	if ctx.Err() != nil {
		return nil // stopped while starting: do not open the socket
	}
	go node.ReclaimOrphans(ctx, o.inlineCleanup)
	// Probe answers from pool checks that outlive a probe's deadline (volume.Health).
	ids := &csi.Identity{Name: o.driverName, Version: version, Ready: volume.NewHealth(vols.Check, clock.RealClock{}).Ready, Controller: true}
	srv := csi.NewServer(ids, ctrlSvc, node, grpcMetrics.UnaryInterceptor)
	klog.InfoS("carve-csi starting", "mode", o.mode, "version", version, "endpoint", o.endpoint, "driver", o.driverName,
		"node", o.nodeID, "pools", o.pools.String(), "defaultPool", o.defaultPool, "standalone", o.standalone)
	return serve(ctx, o.endpoint, srv, mgr, ms)
}

func runController(ctx context.Context, o *options) error {
	grpcMetrics, reg, ms, err := startMetrics(o)
	if err != nil {
		return err
	}
	if ms != nil {
		defer ms.Close()
	}
	cfg, err := kubeclient.Config(o.kubeconfig, float32(o.kubeAPIQPS), o.kubeAPIBurst)
	if err != nil {
		return err
	}
	scheme, err := nodeagent.Scheme()
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0"})
	if err != nil {
		return fmt.Errorf("controller manager: %w", err)
	}
	if err := (&cluster.Releaser{Client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		return err
	}
	if err := (&cluster.SnapshotReleaser{Client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		return err
	}
	// The cached client: the releaser's LocalVolume informer answers scrapes.
	if err := reg.Register(metrics.NewLocalVolumes(mgr.GetClient(), 0)); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	// CSI calls wait on the manager's LocalVolume informer and read straight
	// from the API server where the cache could mislead them (a retried
	// CreateVolume must see what the previous attempt wrote). Placement and
	// GetCapacity read NodeStorage and Node metadata from the manager's
	// informers, NodeStorage through a FreshReader over this direct client.
	direct, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	vols, err := cluster.NewVolumes(ctx, mgr.GetCache(), direct)
	if err != nil {
		return err
	}
	ids := &csi.Identity{Name: o.driverName, Version: version, Controller: true, Ready: func(ctx context.Context) error {
		_, err := vols.List(ctx)
		return err
	}}
	srv := csi.NewServer(ids, &csi.ClusterController{Vols: vols, Locks: &keylock.Locks{}, Attach: o.attach}, nil,
		grpcMetrics.UnaryInterceptor)
	klog.InfoS("carve-csi starting", "mode", o.mode, "version", version, "endpoint", o.endpoint, "driver", o.driverName)
	return serve(ctx, o.endpoint, srv, mgr, ms)
}

// serve runs the gRPC server and, if given, the controller manager and the
// metrics server until ctx ends or one of them fails.
func serve(ctx context.Context, endpoint string, srv *grpc.Server, mgr ctrl.Manager, ms *metrics.Server) error {
	lis, err := csi.Listen(endpoint)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 3)
	go func() { errs <- srv.Serve(lis) }()
	if ms != nil {
		go func() {
			if err := ms.Serve(); err != nil {
				errs <- fmt.Errorf("metrics server: %w", err)
			}
		}()
	}
	if mgr != nil {
		go func() {
			if err := mgr.Start(ctx); err != nil {
				errs <- fmt.Errorf("kubernetes controllers: %w", err)
				return
			}
			errs <- nil
		}()
	}
	klog.InfoS("Serving CSI", "endpoint", endpoint)
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	klog.InfoS("Shutting down", "reason", err)
	cancel()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second): // a call stuck in a tool must not block the exit
		srv.Stop()
	}
	if ms != nil {
		// A scrape waits at most its pool timeout; do not wait longer than that.
		sctx, scancel := context.WithTimeout(context.Background(), metrics.DefaultScrapeTimeout)
		defer scancel()
		if serr := ms.Shutdown(sctx); serr != nil {
			klog.ErrorS(serr, "Stopping the metrics server")
		}
	}
	return err
}
