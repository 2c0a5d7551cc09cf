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
	if l := s.clientLimits("kube-controller-manager/persistent-volume-binder"); l != (clientLimit{20, 30}) {
		t.Errorf("kcm default %+v", l)
	}
	s.KCMArgs = "--kube-api-qps=100 --kube-api-burst=200"
	if l := s.clientLimits("kube-controller-manager/x"); l != (clientLimit{100, 200}) {
		t.Errorf("kcm with %q: %+v", s.KCMArgs, l)
	}
	if l := s.clientLimits("kube-scheduler/scheduler"); l != (clientLimit{50, 100}) {
		t.Errorf("scheduler %+v", l)
	}
	// 30 ride the burst, the other 4000 at 20/s.
	if f := (clientLimit{20, 30}).floor(4030); f != 200*time.Second {
		t.Errorf("floor %v, want 200s", f)
	}
	if f := (clientLimit{20, 30}).floor(10); f != 0 {
		t.Errorf("floor within the burst %v", f)
	}
}
