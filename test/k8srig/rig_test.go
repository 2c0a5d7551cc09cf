package k8srig

import (
	"slices"
	"strings"
	"testing"
)

// The rig's sidecars run with the flags the manifests ship (issue 12: a 1s
// capacity poll in the rig hid capacity that lagged behind CreateVolume).
func TestSidecarArgsFollowManifest(t *testing.T) {
	r := &Rig{Root: RepoRoot(), CtrlKC: "/kc"}
	prov := r.ProvisionerArgs(t, "/csi.sock")
	for _, want := range []string{"--kubeconfig=/kc", "--csi-address=/csi.sock", "--enable-capacity", "--strict-topology",
		"--leader-election=false", "--capacity-ownerref-level=-1", "--timeout=60s", "--extra-create-metadata"} {
		if !slices.Contains(prov, want) {
			t.Errorf("provisioner args %v lack %s", prov, want)
		}
	}
	for _, a := range prov {
		if strings.HasPrefix(a, "--capacity-poll-interval") {
			t.Errorf("provisioner runs with %s, which deploy/kubernetes/base/controller.yaml does not ship", a)
		}
	}
	res := r.SidecarArgs(t, "csi-resizer", "/csi.sock")
	for _, want := range []string{"--csi-address=/csi.sock", "--handle-volume-inuse-error=false", "--leader-election=false"} {
		if !slices.Contains(res, want) {
			t.Errorf("resizer args %v lack %s", res, want)
		}
	}
	t.Logf("csi-provisioner %s", strings.Join(prov, " "))
	t.Logf("csi-resizer %s", strings.Join(res, " "))
}
