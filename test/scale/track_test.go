package scale

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/carve-csi/carve/test/k8srig"
)

const (
	podNS       = "scale"
	selectedKey = "volume.kubernetes.io/selected-node"
)

// stamps are the moments this process first saw each step of a pod and its
// generic ephemeral volume's claim (named <pod>-scratch), from its own
// watches of pods, claims and volumes.
type stamps struct {
	mu                                   sync.Mutex
	created, scheduled                   map[string]time.Time // pod
	claimSeen, selected, pvSeen, claimed map[string]time.Time // claim: made, selected-node set, PV made, Bound
	node                                 map[string]string    // pod -> node
}

// track starts the watches; they stop at cleanup.
func track(t testing.TB, p *plane) *stamps {
	s := &stamps{created: map[string]time.Time{}, scheduled: map[string]time.Time{}, claimSeen: map[string]time.Time{},
		selected: map[string]time.Time{}, pvSeen: map[string]time.Time{}, claimed: map[string]time.Time{}, node: map[string]string{}}
	first := func(m map[string]time.Time, k string) {
		if _, ok := m[k]; !ok {
			m[k] = time.Now()
		}
	}
	onPod := func(o any) {
		if pod, ok := o.(*corev1.Pod); ok && pod.Spec.NodeName != "" {
			s.mu.Lock()
			first(s.scheduled, pod.Name)
			s.node[pod.Name] = pod.Spec.NodeName
			s.mu.Unlock()
		}
	}
	onClaim := func(o any) {
		c, ok := o.(*corev1.PersistentVolumeClaim)
		if !ok {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		first(s.claimSeen, c.Name)
		if c.Annotations[selectedKey] != "" {
			first(s.selected, c.Name)
		}
		if c.Status.Phase == corev1.ClaimBound {
			first(s.claimed, c.Name)
		}
	}
	onPV := func(o any) {
		if pv, ok := o.(*corev1.PersistentVolume); ok && pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.Namespace == podNS {
			s.mu.Lock()
			first(s.pvSeen, pv.Spec.ClaimRef.Name)
			s.mu.Unlock()
		}
	}
	handler := func(f func(any)) cache.ResourceEventHandlerFuncs {
		return cache.ResourceEventHandlerFuncs{AddFunc: f, UpdateFunc: func(_, o any) { f(o) }}
	}
	ns := informers.NewSharedInformerFactoryWithOptions(p.cs, 0, informers.WithNamespace(podNS))
	all := informers.NewSharedInformerFactory(p.cs, 0)
	for _, reg := range []struct {
		inf cache.SharedIndexInformer
		f   func(any)
	}{{ns.Core().V1().Pods().Informer(), onPod}, {ns.Core().V1().PersistentVolumeClaims().Informer(), onClaim},
		{all.Core().V1().PersistentVolumes().Informer(), onPV}} {
		if _, err := reg.inf.AddEventHandler(handler(reg.f)); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	ns.Start(stop)
	all.Start(stop)
	ns.WaitForCacheSync(stop)
	all.WaitForCacheSync(stop)
	return s
}

func claimOf(pod string) string { return k8srig.ClaimOf(pod) }

// since is the time from each pod's creation to step (of the pod, or of its
// claim if claim), for the pods that reached it.
func (s *stamps) since(pods []string, step map[string]time.Time, claim bool) []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []time.Duration
	for _, p := range pods {
		k := p
		if claim {
			k = claimOf(p)
		}
		if at, ok := step[k]; ok {
			out = append(out, at.Sub(s.created[p]))
		}
	}
	slices.Sort(out)
	return out
}

// done counts the pods that are scheduled and, with volumes, whose claim is
// Bound; last is when the last of them got there.
func (s *stamps) done(pods []string, volumes bool) (n int, last time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range pods {
		at, ok := s.scheduled[p]
		if !ok {
			continue
		}
		if volumes {
			b, ok := s.claimed[claimOf(p)]
			if !ok {
				continue
			}
			at = later(at, b)
		}
		n++
		last = later(last, at)
	}
	return n, last
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// newPod is a pod that never runs (no kubelet): no resource requests, so
// only the pod count (110 per node) and, with size > 0, a generic ephemeral
// volume of size bytes in carve's class limit where it goes.
func newPod(name string, size int64, sel map[string]string) *corev1.Pod {
	zero := int64(0)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: podNS},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &zero, NodeSelector: sel,
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10.1"}}},
	}
	if size > 0 {
		sc := k8srig.SCName
		pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}}
		pod.Spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{
			Ephemeral: &corev1.EphemeralVolumeSource{VolumeClaimTemplate: &corev1.PersistentVolumeClaimTemplate{
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					StorageClassName: &sc,
					Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
						corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)}},
				}}}}}}
	}
	return pod
}

// createPods creates n pods named prefix-i with 16 clients at once, or at
// rate pods per second when rate > 0, recording each creation time; it
// returns the names.
func createPods(t testing.TB, p *plane, st *stamps, prefix string, n int, size int64, sel map[string]string, rate float64) []string {
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	errs := make(chan error, n)
	create := func(name string) {
		st.mu.Lock()
		st.created[name] = time.Now()
		st.mu.Unlock()
		if _, err := p.cs.CoreV1().Pods(podNS).Create(context.Background(), newPod(name, size, sel), metav1.CreateOptions{}); err != nil {
			errs <- fmt.Errorf("create pod %s: %w", name, err)
		}
	}
	var wg sync.WaitGroup
	if rate > 0 {
		tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
		for _, name := range names {
			wg.Go(func() { create(name) })
			<-tick.C
		}
		tick.Stop()
	} else {
		work := make(chan string)
		for range 16 {
			wg.Go(func() {
				for name := range work {
					create(name)
				}
			})
		}
		for _, name := range names {
			work <- name
		}
		close(work)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return names
}

// waitDone waits until every pod is scheduled (and its claim Bound if
// volumes) and returns the time from the first creation to the last.
func waitDone(t testing.TB, st *stamps, pods []string, volumes bool, limit time.Duration) time.Duration {
	k8srig.WaitFor(t, fmt.Sprintf("%d pods scheduled (volumes %v)", len(pods), volumes), limit, 250*time.Millisecond, func() (bool, string) {
		n, _ := st.done(pods, volumes)
		return n == len(pods), fmt.Sprintf("%d of %d done", n, len(pods))
	})
	_, last := st.done(pods, volumes)
	st.mu.Lock()
	defer st.mu.Unlock()
	start := st.created[pods[0]]
	for _, p := range pods {
		if st.created[p].Before(start) {
			start = st.created[p]
		}
	}
	return last.Sub(start)
}

func pct(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}
