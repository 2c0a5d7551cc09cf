// Package v1alpha1 holds carve's custom resources: LocalVolume (one per volume,
// the channel between the controller and the node that owns the device),
// LocalSnapshot (one per snapshot, likewise) and NodeStorage (one per node,
// its pools' capacity).
// +kubebuilder:object:generate=true
// +groupName=carve.csi.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is carve.csi.dev/v1alpha1.
	GroupVersion = schema.GroupVersion{Group: "carve.csi.dev", Version: "v1alpha1"}
	// SchemeBuilder registers the types.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}
	// AddToScheme adds the types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
