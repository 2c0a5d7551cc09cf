package integration

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/client-go/rest"

	"github.com/carve-csi/carve/pkg/kubeclient"
	"github.com/carve-csi/carve/pkg/nodeagent"
	"github.com/carve-csi/carve/test/k8srig"
)

// TestNodeAgentRequestsPerVolume (issue 13): the API requests the node agents
// make for a volume's life, counted on their own clients' transport against
// a real API server, for 30 volumes made and deleted at once on three
// simulated nodes (as in BenchmarkControllerBurst). A node reads its Node
// from a watch of that one Node and NodeStorage from the copy it last wrote,
// so its requests are the writes a volume needs: the finalizer on and off,
// the status, and NodeStorage's status (publishes asked for together share
// one). Before, every publish and every device creation read the Node and
// NodeStorage first: 14.2 requests per volume on the bench-scale rig, 8.4 of
// them these reads.
func TestNodeAgentRequestsPerVolume(t *testing.T) {
	gate(t, k8srig.RepoRoot())
	admin, _ := startControlPlane(t, benchBin(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	counts := &requestCounts{m: map[string]int{}}
	r := startArm(t, ctx, admin, &burstArm{name: "requests", watch: true, qps: kubeclient.DefaultQPS, burst: kubeclient.DefaultBurst,
		nodeCfg: func(_ string, cfg *rest.Config) { cfg.Wrap(counts.wrap) }})
	start, before := time.Now(), counts.snapshot()

	const n = 30
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			resp, err := r.cc.CreateVolume(ctx, burstCreate(fmt.Sprintf("pvc-requests-%d", i), i))
			if err != nil {
				t.Errorf("CreateVolume %d: %v", i, err)
				return
			}
			ids[i] = resp.GetVolume().GetVolumeId()
		})
	}
	wg.Wait()
	audit(t, ctx, r, n)
	for i := range n {
		wg.Go(func() {
			if _, err := r.cc.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: ids[i]}); err != nil {
				t.Errorf("DeleteVolume %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	audit(t, ctx, r, 0)
	elapsed := time.Since(start)

	after := counts.snapshot()
	total := 0
	var lines []string
	for _, k := range slices.Sorted(maps.Keys(after)) {
		d := after[k] - before[k]
		if d == 0 {
			continue
		}
		total += d
		lines = append(lines, fmt.Sprintf("  %-40s %4d  %.2f per volume", k, d, float64(d)/n))
	}
	t.Logf("node agents' requests for %d volumes made and deleted in %v (%.2f per volume):\n%s",
		n, elapsed.Round(time.Millisecond), float64(total)/n, strings.Join(lines, "\n"))
	if d := after["get nodes"] - before["get nodes"]; d != 0 {
		t.Errorf("%d Node GETs: the agent reads its Node from its watch", d)
	}
	// Only Run's slow resync reads NodeStorage: at most one per node per resync period.
	resyncs := int(elapsed/nodeagent.DefaultResync) + 1
	if d := after["get nodestorages"] - before["get nodestorages"]; d > len(burstNodes)*resyncs {
		t.Errorf("%d NodeStorage GETs in %v, want at most %d (one per node per resync)", d, elapsed, len(burstNodes)*resyncs)
	}
	// What a volume needs: finalizer on and off, the status, NodeStorage
	// (two publishes at most: after the create, after the delete), and room
	// for a status written twice or a conflict retried (4.4 measured).
	if per := float64(total) / n; per > 6 {
		t.Errorf("%.2f requests per volume by the node agents, want at most 6", per)
	}
}

// requestCounts counts API requests by verb and resource ("get nodes",
// "update localvolumes", "update nodestorages/status", "watch nodes").
type requestCounts struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *requestCounts) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		c.mu.Lock()
		c.m[requestKind(req)]++
		c.mu.Unlock()
		return rt.RoundTrip(req)
	})
}

func (c *requestCounts) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.m)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// requestKind names a cluster-scoped request as the API server's audit log
// would: verb, resource, subresource (/api/v1/RESOURCE[/NAME[/SUB]],
// /apis/GROUP/VERSION/RESOURCE[/NAME[/SUB]]). Other paths (discovery) are
// "GET /path".
func requestKind(req *http.Request) string {
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	var rest []string
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		rest = parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		rest = parts[3:]
	default:
		return req.Method + " " + req.URL.Path
	}
	resource := rest[0]
	if len(rest) >= 3 {
		resource += "/" + rest[2]
	}
	verb := map[string]string{"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[req.Method]
	switch {
	case verb != "":
	case req.URL.Query().Get("watch") == "true":
		verb = "watch"
	case len(rest) == 1:
		verb = "list"
	default:
		verb = "get"
	}
	return verb + " " + resource
}
