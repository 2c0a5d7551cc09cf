package main

import (
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	dir := t.TempDir()
	o, err := parseFlags([]string{"--mode=node", "--nodeid=n1", "--pool=a=lvm:vg1", "--pool=b=lvm:vg2", "--kubelet-dir=" + dir})
	if err != nil {
		t.Fatal(err)
	}
	if o.defaultPool != "a" || len(o.pools) != 2 || o.nodeID != "n1" {
		t.Fatalf("options %+v", o)
	}
	if o.kubeAPIQPS != 200 || o.kubeAPIBurst != 400 {
		t.Errorf("client rate limits %g/%d by default, want 200/400 as documented", o.kubeAPIQPS, o.kubeAPIBurst)
	}
	if o, err := parseFlags([]string{"--mode=controller", "--kube-api-qps=7.5", "--kube-api-burst=15"}); err != nil || o.kubeAPIQPS != 7.5 || o.kubeAPIBurst != 15 {
		t.Errorf("--kube-api-qps=7.5 --kube-api-burst=15: %+v, %v", o, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nodeid=n1", "--pool=a=lvm:vg"}, "--mode is required"},
		{[]string{"--mode=server", "--nodeid=n1", "--pool=a=lvm:vg"}, `--mode="server" is not supported`},
		{[]string{"--mode=node", "--pool=a=lvm:vg", "--kubelet-dir=" + dir}, "--nodeid"},
		{[]string{"--mode=node", "--nodeid=n1", "--kubelet-dir=" + dir}, "at least one --pool"},
		{[]string{"--mode=node", "--nodeid=n1", "--pool=a=zfs:tank"}, `unknown type "zfs"`},
		{[]string{"--mode=node", "--nodeid=n1", "--pool=a=lvm:vg", "--kubelet-dir=/nonexistent/kubelet"}, "is not a directory"},
		{[]string{"--mode=node", "--bogus"}, "flag provided but not defined"},
		{[]string{"--mode=node", "extra"}, "unexpected arguments"},
		{[]string{"--mode=controller", "--kube-api-qps=0"}, "--kube-api-qps (0) and --kube-api-burst (400) must be positive"},
		{[]string{"--mode=controller", "--kube-api-burst=-1"}, "must be positive"},
		{[]string{"--mode=controller", "--pprof"}, "--pprof needs --metrics-address"},
	} {
		t.Setenv("NODE_NAME", "")
		_, err := parseFlags(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
