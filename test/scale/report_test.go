package scale

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func ratioOf(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// report prints every figure of every control plane, each ratio measured
// within one control plane.
func report(s settings, results []*result) {
	fmt.Printf("\n=== bench-scale: %d simulated nodes ===\n", s.Nodes)
	for _, r := range results {
		fmt.Printf("\n--- kube-scheduler --feature-gates=StorageCapacityScoring=%s ---\n", r.scoring)
		fmt.Printf("1. %d pods over %d nodes, first creation to all scheduled (and bound):\n", s.Pods, s.Nodes)
		fmt.Printf("   without volumes %s, with generic ephemeral volumes (%d MiB) %s: ratio %.2fx (goal <= 1.2x; csi-driver-host-path's study 1.68x)\n",
			secs(r.plain), s.VolSize>>20, secs(r.withVols), ratioOf(r.withVols, r.plain))
		fmt.Printf("   where the time goes, from each pod's creation (median / p99):\n")
		for _, sg := range r.stages {
			fmt.Printf("     %-58s %9s %9s\n", sg.name, secs(sg.med), secs(sg.p99))
		}
		fmt.Printf("   the API server's time while they were made (apiserver_request_duration_seconds, watches aside):\n")
		for _, l := range r.serverTop {
			fmt.Printf("     %s\n", l)
		}
		fmt.Printf("   carve's CreateVolume (controller metrics): %g calls, mean %s\n", r.createCalls, secs(r.createMean))
		fmt.Printf("   the control plane's clients until all were done (audit log), requests per pod and the least time their client-side limits allow:\n")
		for _, arm := range []struct {
			name string
			took time.Duration
			cp   map[string]map[string]int
		}{{"without volumes", r.plain, r.cpPlain}, {"with volumes", r.withVols, r.cpVols}} {
			for _, l := range floorLines(arm.cp, s.Pods, arm.took, s.clientLimits) {
				fmt.Printf("     %s: %s\n", arm.name, l)
			}
		}
		cm, cp := pct(r.ctlBound, 0.5), pct(r.ctlBound, 0.99)
		dm, dp := pct(r.distBound, 0.5), pct(r.distBound, 0.99)
		fmt.Printf("2. pod -> claim Bound, %d pods at %g/s on %d nodes: controller mode median %s p99 %s; distributed (%d external-provisioners) median %s p99 %s\n",
			s.DistPods, s.DistRate, s.DistNodes, secs(cm), secs(cp), s.DistNodes, secs(dm), secs(dp))
		fmt.Printf("   controller/distributed: median %.2fx, p99 %.2fx (goal <= 1.1x)\n", ratioOf(cm, dm), ratioOf(cp, dp))
		fmt.Printf("3. burst of %d pods, %d MiB volumes, %d fit per node: all scheduled and bound in %s; %g ResourceExhausted answers, %d ProvisioningFailed events; at most %d pods on a node\n",
			s.Burst, s.burstSize()>>20, s.BurstFit, secs(r.burst), r.burstExhausted, r.burstFailed, r.burstMaxOnNode)
		fmt.Printf("4. API requests per volume, create to delete (apiserver_flowcontrol_dispatched_requests_total per ServiceAccount): carve controller %.2f, node agents %.2f (all on the volume's node), external-provisioner %.2f\n",
			r.perVolume[userController], r.perVolume[userNode], r.perVolume[userProvisioner])
		for _, u := range []string{userController, userNode, userProvisioner} {
			fmt.Printf("     %s per volume (audit log): %s\n", u, r.breakdown[u])
		}
		if r.idleMeasured {
			fmt.Printf("   idle over %v: %.3f NodeStorage writes per node per minute (goal 0), %.2f node agent requests per node per minute (resync %v)\n",
				s.Idle, r.idleWrites, r.idleNodeReqs, s.Resync)
		}
		fmt.Printf("   carve controller with %d volumes on %d nodes: RSS %.1f MiB, heap in use %.1f MiB\n",
			s.Pods, s.Nodes, r.ctrlRSS/(1<<20), r.ctrlHeap/(1<<20))
		var names []string
		total := 0
		for n, c := range r.throttled {
			names = append(names, fmt.Sprintf("%s %d", n, c))
			total += c
		}
		slices.Sort(names)
		fmt.Printf("   client-side throttling lines: %d (%s)\n", total, strings.Join(names, ", "))
	}
}

// clientLimit is a client's client-side rate limit: qps requests a second
// after a burst of burst. eventsApart: the component sends its events
// through another client, with a limiter of its own (kube-scheduler's
// createClients), so they do not count against this one.
type clientLimit struct {
	qps         float64
	burst       int
	eventsApart bool
}

// floor is the least time the limiter lets n requests take.
func (l clientLimit) floor(n int) time.Duration {
	if n <= l.burst || l.qps <= 0 {
		return 0
	}
	return time.Duration(float64(n-l.burst) / l.qps * float64(time.Second))
}

// controlPlane keeps the control-plane components' clients of an audit count.
func controlPlane(counts map[string]map[string]int) map[string]map[string]int {
	out := map[string]map[string]int{}
	for u, c := range counts {
		if strings.HasPrefix(u, "kube-scheduler/") || strings.HasPrefix(u, "kube-controller-manager/") {
			out[u] = c
		}
	}
	return out
}

// floorLines renders each control-plane client that made at least one
// request per ten pods: its requests per pod, busiest kinds first, and the
// least time its client-side limit allows for them against the time the
// phase took. A floor near the phase's time says that client's limiter, not
// the API server or carve, paced the phase.
func floorLines(cp map[string]map[string]int, pods int, took time.Duration, limits func(client string) clientLimit) []string {
	var out []string
	for _, u := range slices.Sorted(maps.Keys(cp)) {
		l := limits(u)
		n, limited := 0, 0
		for k, c := range cp[u] {
			n += c
			if !l.eventsApart || !strings.HasSuffix(k, " events") {
				limited += c
			}
		}
		if float64(n) < float64(pods)/10 {
			continue
		}
		apart := ""
		if l.eventsApart {
			apart = ", events aside (a client of their own)"
		}
		f := l.floor(limited)
		out = append(out, fmt.Sprintf("%s %.2f per pod (%s); at %g/s, burst %d%s: at least %s of the %s taken (%.0f%%)",
			u, float64(n)/float64(pods), topPerVolume(cp[u], pods), l.qps, l.burst, apart, secs(f), secs(took), 100*ratioOf(f, took)))
	}
	return out
}
