package scale

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/carve-csi/carve/test/k8srig"
)

// auditArgs writes an audit policy that records the metadata of carve's,
// external-provisioner's, kube-scheduler's and kube-controller-manager's
// requests only (one event per request, when it
// completes) and returns the kube-apiserver flags that use it. The audit log
// breaks item 4's counts down by verb and resource.
func auditArgs(tb testing.TB, dir string) (args, logFile string) {
	policy := filepath.Join(dir, "audit-policy.yaml")
	var users []string
	for _, u := range []string{userController, userNode, userProvisioner} {
		users = append(users, `"system:serviceaccount:`+k8srig.CarveNS+":"+u+`"`)
	}
	// The scheduler and the controller-manager too: item 1 sets their
	// requests against their client-side limits (controlPlaneFloor).
	users = append(users, `"system:kube-scheduler"`, `"system:kube-controller-manager"`)
	text := "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived, ResponseStarted]\nrules:\n" +
		"- level: Metadata\n  users: [" + strings.Join(users, ", ") + "]\n- level: None\n"
	if err := os.WriteFile(policy, []byte(text), 0o644); err != nil {
		tb.Fatal(err)
	}
	logFile = filepath.Join(dir, "audit.log")
	return "--audit-policy-file=" + policy + " --audit-log-path=" + logFile + " --audit-log-format=json --audit-log-maxsize=0", logFile
}

type auditEvent struct {
	Verb string `json:"verb"`
	User struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
	} `json:"objectRef"`
	RequestURI string    `json:"requestURI"`
	UserAgent  string    `json:"userAgent"`
	Received   time.Time `json:"requestReceivedTimestamp"`
}

// auditCounts counts the audited requests received in [from, to) by user
// (the ServiceAccount's name) and "verb resource[/subresource]".
func auditCounts(tb testing.TB, file string, from, to time.Time) map[string]map[string]int {
	f, err := os.Open(file)
	if err != nil {
		tb.Fatalf("audit log: %v", err)
	}
	defer f.Close()
	out := map[string]map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	prefix := "system:serviceaccount:" + k8srig.CarveNS + ":"
	for sc.Scan() {
		var ev auditEvent
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Received.Before(from) || !ev.Received.Before(to) {
			continue
		}
		what := ev.RequestURI
		if ev.ObjectRef != nil {
			what = ev.ObjectRef.Resource
			if ev.ObjectRef.Subresource != "" {
				what += "/" + ev.ObjectRef.Subresource
			}
		}
		u := strings.TrimPrefix(ev.User.Username, prefix)
		if strings.HasPrefix(u, "system:kube-") {
			// "kube-controller-manager/persistent-volume-binder": every
			// controller of kube-controller-manager has a client (and
			// client-side limiter) of its own, named in its user agent.
			u = strings.TrimPrefix(u, "system:") + "/" + agentClient(ev.UserAgent)
		}
		if out[u] == nil {
			out[u] = map[string]int{}
		}
		out[u][ev.Verb+" "+what]++
	}
	return out
}

// agentClient is the client name client-go's AddUserAgent appends to a
// control-plane component's user agent ("kube-controller-manager/v1.37.2
// (linux/amd64) kubernetes/abcdef0/persistent-volume-binder" ->
// "persistent-volume-binder"), "" when there is none.
func agentClient(ua string) string {
	_, rest, ok := strings.Cut(ua, " kubernetes/")
	if !ok {
		return ""
	}
	_, name, _ := strings.Cut(rest, "/")
	return name
}

// topPerVolume renders a user's counts per volume, largest first.
func topPerVolume(counts map[string]int, volumes int) string {
	type kv struct {
		k string
		n int
	}
	var all []kv
	for k, n := range counts {
		all = append(all, kv{k, n})
	}
	slices.SortFunc(all, func(a, b kv) int {
		if a.n != b.n {
			return b.n - a.n
		}
		return strings.Compare(a.k, b.k)
	})
	var parts []string
	for _, x := range all {
		if v := float64(x.n) / float64(volumes); v >= 0.05 {
			parts = append(parts, fmt.Sprintf("%s %.2f", x.k, v))
		}
	}
	return strings.Join(parts, ", ")
}
