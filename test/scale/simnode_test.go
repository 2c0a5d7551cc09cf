package scale

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	carvecsi "github.com/carve-csi/carve/pkg/csi"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/kubeclient"
	"github.com/carve-csi/carve/pkg/nodeagent"
	"github.com/carve-csi/carve/pkg/volume"
	"github.com/carve-csi/carve/test/k8srig"
)

// simNode is one simulated node in this process: what `carve-csi
// --mode=node` runs, with an in-memory pool instead of lvm2 and no mounts.
type simNode struct {
	name  string
	pool  *backendtest.Memory
	vols  *volume.Manager
	agent *nodeagent.Agent
	locks *keylock.Locks
	sock  string // CSI socket (Identity, node-local Controller, Node), for --node-deployment
}

// startNodes starts a node agent for each node (its own manager, watch and
// client with carve-node's ServiceAccount and carve's default client
// limits, as each DaemonSet pod has) and, for the first dist nodes, the CSI
// socket that a per-node external-provisioner talks to. All stop at cleanup.
func startNodes(t testing.TB, p *plane, s settings) []*simNode {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	cfg, err := kubeclient.Config(p.kc[userNode], kubeclient.DefaultQPS, kubeclient.DefaultBurst)
	if err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "carve-scale-sock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	var nodes []*simNode
	for i := range s.Nodes {
		n := &simNode{name: nodeName(i), pool: backendtest.NewMemory(k8srig.PoolName, s.PoolBytes, 4<<20), locks: &keylock.Locks{}}
		if n.vols, err = volume.NewManager([]volume.Pool{{Name: k8srig.PoolName, Backend: n.pool}}, k8srig.PoolName); err != nil {
			t.Fatal(err)
		}
		mgr, err := nodeagent.NewManager(cfg, nodeagent.ManagerOptions{NodeName: n.name, Select: nodeagent.SelectByLabel, ManyPerProcess: true})
		if err != nil {
			t.Fatal(err)
		}
		n.agent = &nodeagent.Agent{NodeName: n.name, Vols: n.vols, Locks: n.locks, Resync: s.Resync}
		if err := n.agent.SetupWithManager(mgr); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { runManager(t, ctx, mgr, n.name) })
		if i < s.DistNodes {
			n.sock = filepath.Join(sockDir, n.name+".sock")
			srv := carvecsi.NewServer(&carvecsi.Identity{Name: k8srig.DriverName, Version: "scale", Controller: true},
				&carvecsi.LocalController{Vols: n.vols, NodeID: n.name, Locks: n.locks, Changed: n.agent.Changed},
				&carvecsi.Node{Vols: n.vols, NodeID: n.name, Locks: n.locks})
			lis, err := carvecsi.Listen("unix://" + n.sock)
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() { serveUntil(ctx, srv, lis) })
		}
		nodes = append(nodes, n)
	}
	return nodes
}

func runManager(t testing.TB, ctx context.Context, mgr ctrl.Manager, name string) {
	if err := mgr.Start(ctx); err != nil {
		t.Errorf("node agent %s: %v", name, err)
	}
}

// serveUntil serves CSI on lis until ctx ends.
func serveUntil(ctx context.Context, srv *grpc.Server, lis net.Listener) {
	go func() { <-ctx.Done(); srv.Stop() }()
	_ = srv.Serve(lis)
}

// waitPublished waits until every node's NodeStorage shows its pool.
func waitPublished(t testing.TB, p *plane, n int, limit time.Duration) {
	k8srig.WaitFor(t, "every simulated node's NodeStorage", limit, 250*time.Millisecond, func() (bool, string) {
		var list v1alpha1.NodeStorageList
		if err := p.cl.List(context.Background(), &list); err != nil {
			return false, err.Error()
		}
		published := 0
		for _, ns := range list.Items {
			if len(ns.Status.Pools) > 0 {
				published++
			}
		}
		return published == n, fmt.Sprintf("%d of %d published", published, n)
	})
}
