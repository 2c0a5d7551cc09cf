package pmem

import (
	"slices"
	"testing"
	"time"
)

// logSteps reads what carve-csi logs at --v=3 --vmodule=exec=5,pmem=4 (the format klog gives it).
func TestLogSteps(t *testing.T) {
	log := `I1130 10:00:00.000000  1 exec.go:104] "exec" cmd=["ndctl","create-namespace","-r","region0","-m","fsdax"] duration="895ms" err=null
I1130 10:00:00.000000  1 pmem.go:300] "PMEM create steps" id="carve-pvc-csi-bench-1-0123456789abcdef" pendingRecord="1.5ms" createNamespace="900ms" wipe="152ms" finalRecord="1.25ms"
I1130 10:00:00.000000  1 server.go:76] "GRPC call" method="/csi.v1.Controller/CreateVolume" duration="1.213s" code="OK"
`
	got := logSteps([]byte(log))
	for name, want := range map[string]time.Duration{
		"create-namespace": 895 * time.Millisecond, "CreateVolume": 1213 * time.Millisecond, "pendingRecord": 1500 * time.Microsecond,
		"createNamespace": 900 * time.Millisecond, "wipe": 152 * time.Millisecond, "finalRecord": 1250 * time.Microsecond,
	} {
		if !slices.Equal(got[name], []time.Duration{want}) {
			t.Errorf("%s: got %v, want [%v]", name, got[name], want)
		}
	}
}
