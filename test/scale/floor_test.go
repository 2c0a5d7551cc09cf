package scale

import (
	"testing"
	"time"
)

func TestAgentClient(t *testing.T) {
	for ua, want := range map[string]string{
		"kube-controller-manager/v1.37.2 (linux/amd64) kubernetes/4b8e819/persistent-volume-binder": "persistent-volume-binder",
		"kube-scheduler/v1.37.2 (linux/amd64) kubernetes/4b8e819/scheduler":                         "scheduler",
		"kube-controller-manager/v1.37.2 (linux/amd64) kubernetes/4b8e819":                          "",
		"curl/8.0": "",
	} {
		if got := agentClient(ua); got != want {
			t.Errorf("agentClient(%q) = %q, want %q", ua, got, want)
		}
	}
}

func TestClientLimits(t *testing.T) {
	s := settings{}
	if l := s.clientLimits("kube-controller-manager/persistent-volume-binder"); l != (clientLimit{20, 30, false}) {
		t.Errorf("kcm default %+v", l)
	}
	s.KCMArgs = "--kube-api-qps=100 --kube-api-burst=200"
	if l := s.clientLimits("kube-controller-manager/x"); l != (clientLimit{100, 200, false}) {
		t.Errorf("kcm with %q: %+v", s.KCMArgs, l)
	}
	if l := s.clientLimits("kube-scheduler/scheduler"); l != (clientLimit{50, 100, true}) {
		t.Errorf("scheduler %+v", l)
	}
	s.SchedArgs = "--feature-gates=X=true --kube-api-qps=500 --kube-api-burst=1000"
	if l := s.clientLimits("kube-scheduler/scheduler"); l != (clientLimit{500, 1000, true}) {
		t.Errorf("scheduler with %q: %+v", s.SchedArgs, l)
	}
	// 30 ride the burst, the other 4000 at 20/s.
	if f := (clientLimit{qps: 20, burst: 30}).floor(4030); f != 200*time.Second {
		t.Errorf("floor %v, want 200s", f)
	}
	if f := (clientLimit{qps: 20, burst: 30}).floor(10); f != 0 {
		t.Errorf("floor within the burst %v", f)
	}
}

// The scheduler's events do not count against its limiter; a controller's do.
func TestFloorLines(t *testing.T) {
	cp := map[string]map[string]int{
		"kube-scheduler/scheduler":                         {"create pods/binding": 1000, "create events": 1000},
		"kube-controller-manager/persistent-volume-binder": {"update persistentvolumeclaims": 2000, "create events": 1030},
		"kube-controller-manager/idle":                     {"get nodes": 5},
	}
	lines := floorLines(cp, 1000, 20*time.Second, settings{}.clientLimits)
	want := []string{
		"kube-controller-manager/persistent-volume-binder 3.03 per pod (update persistentvolumeclaims 2.00, create events 1.03); at 20/s, burst 30: at least 150.00s of the 20.00s taken (750%)",
		"kube-scheduler/scheduler 2.00 per pod (create events 1.00, create pods/binding 1.00); at 50/s, burst 100, events aside (a client of their own): at least 18.00s of the 20.00s taken (90%)",
	}
	if len(lines) != len(want) {
		t.Fatalf("lines %q, want %q", lines, want)
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d:\n got %s\nwant %s", i, lines[i], want[i])
		}
	}
}
