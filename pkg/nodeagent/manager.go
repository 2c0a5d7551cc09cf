package nodeagent

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
)

// NodeLabel, set by the controller on a LocalVolume or LocalSnapshot to its
// spec.nodeName, lets a node watch only its own (SelectByLabel).
const NodeLabel = "carve.csi.dev/node"

// Selection is how a node limits the LocalVolumes it watches. Whatever the
// selection, the reconciler only acts on objects whose spec.nodeName is this
// node.
type Selection string

const (
	// SelectAll watches every LocalVolume and filters on the node: correct
	// with any controller, costs memory in proportion to the cluster's volumes.
	SelectAll Selection = ""
	// SelectByLabel watches LocalVolumes labeled NodeLabel=<node> only. Use it
	// only if the controller labels every LocalVolume: an unlabeled one is
	// invisible to its node (it gets no finalizer, so it never blocks deletion).
	SelectByLabel Selection = "label"
	// SelectByField watches with the field selector spec.nodeName=<node>. It
	// needs the CRD to list .spec.nodeName among its selectableFields.
	SelectByField Selection = "field"
)

// ManagerOptions configure NewManager.
type ManagerOptions struct {
	// NodeName is this node.
	NodeName string
	// Select limits the LocalVolume watch (default SelectAll).
	Select Selection
	// ManyPerProcess lets several agents run in one process (simulated
	// nodes in tests and benchmarks): controller-runtime otherwise refuses
	// a second controller of the same name.
	ManyPerProcess bool
}

// Scheme returns a scheme with core/v1 and carve's v1alpha1 types.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

// NewManager returns a controller-runtime manager for the node agent: no
// leader election (every node runs its own), a cache holding the
// LocalVolumes and LocalSnapshots o.Select lets through (SelectAll, the zero
// value, watches every node's; carve-csi passes SelectByLabel) and the
// metadata of this node's Node only (a watch with the field selector
// metadata.name=<node>: RBAC list and watch on nodes), and a client that
// never caches NodeStorage (the agent writes from its own copy). With
// SelectByLabel or SelectByField a node lists and watches no other node's
// objects.
func NewManager(cfg *rest.Config, o ManagerOptions) (ctrl.Manager, error) {
	if o.NodeName == "" {
		return nil, fmt.Errorf("nodeagent: node name is required")
	}
	scheme, err := Scheme()
	if err != nil {
		return nil, err
	}
	cacheOpts, err := cacheOptions(o)
	if err != nil {
		return nil, err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:         scheme,
		LeaderElection: false,
		// No metrics server of its own: carve-csi serves controller-runtime's
		// registry along with carve's on --metrics-address (pkg/metrics).
		Metrics: metricsserver.Options{BindAddress: "0"},
		// No health probe server: the CSI livenessprobe sidecar probes the driver.
		HealthProbeBindAddress: "0",
		Cache:                  cacheOpts,
		Client: client.Options{
			// Node is not in this list: the agent reads it only as metadata,
			// which the cache serves from its one-Node watch (a typed Node
			// read would start a second, full-object watch of it).
			Cache: &client.CacheOptions{DisableFor: []client.Object{&v1alpha1.NodeStorage{}}},
		},
		Controller: config.Controller{SkipNameValidation: &o.ManyPerProcess},
	})
	if err != nil {
		return nil, fmt.Errorf("nodeagent: manager: %w", err)
	}
	return mgr, nil
}

// cacheOptions limits the LocalVolume and LocalSnapshot informers as
// o.Select says, and keeps
// objects without their managedFields: the agent never reads them (it writes
// with Update and merge patches, no server-side apply, and an Update without
// managedFields leaves the server's as they are), and they are most of a
// LocalVolume's bytes once the controller and the node both wrote it.
func cacheOptions(o ManagerOptions) (cache.Options, error) {
	opts := cache.Options{DefaultTransform: cache.TransformStripManagedFields()}
	// The Node, read before every publish and device creation, from a watch
	// of this node's Node alone (issue 13: one GET each time).
	node := &metav1.PartialObjectMetadata{}
	node.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Node"))
	opts.ByObject = map[client.Object]cache.ByObject{node: {Field: fields.OneTermEqualSelector("metadata.name", o.NodeName)}}
	var lv cache.ByObject
	switch o.Select {
	case SelectAll:
		return opts, nil
	case SelectByLabel:
		lv.Label = labels.SelectorFromSet(labels.Set{NodeLabel: o.NodeName})
	case SelectByField:
		lv.Field = fields.OneTermEqualSelector("spec.nodeName", o.NodeName)
	default:
		return cache.Options{}, fmt.Errorf("nodeagent: unknown LocalVolume selection %q (want %q, %q or %q)",
			o.Select, SelectAll, SelectByLabel, SelectByField)
	}
	// LocalSnapshots carry the same label and field (issue 14).
	opts.ByObject[&v1alpha1.LocalVolume{}] = lv
	opts.ByObject[&v1alpha1.LocalSnapshot{}] = lv
	return opts, nil
}
