package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Finalizer is held by the node on every LocalVolume whose device may exist.
const Finalizer = "carve.csi.dev/device"

// LocalVolumePhase is where a LocalVolume is in its life.
// +kubebuilder:validation:Enum=Pending;Ready;Failed
type LocalVolumePhase string

const (
	// PhasePending: the node has not acted yet.
	PhasePending LocalVolumePhase = "Pending"
	// PhaseReady: the device exists with at least the requested size.
	PhaseReady LocalVolumePhase = "Ready"
	// PhaseFailed: the node could not create or expand the device; see code and message.
	PhaseFailed LocalVolumePhase = "Failed"
)

// LocalVolumeSpec is what the controller asks of the node.
// +kubebuilder:validation:XValidation:rule="!has(self.stripeSizeBytes) || has(self.stripes)",message="stripeSizeBytes needs stripes"
type LocalVolumeSpec struct {
	// VolumeName is the CSI volume name this volume was created for.
	// +kubebuilder:validation:MinLength=1
	VolumeName string `json:"volumeName"`
	// NodeName is the node whose pool holds the device.
	// +kubebuilder:validation:MinLength=1
	NodeName string `json:"nodeName"`
	// Pool on that node; empty means the node's default pool.
	// +optional
	Pool string `json:"pool,omitempty"`
	// SizeBytes is the minimum size; the node rounds up to its pool's granularity.
	// +kubebuilder:validation:Minimum=1
	SizeBytes int64 `json:"sizeBytes"`
	// LimitBytes, if set, is the largest acceptable size.
	// +optional
	LimitBytes int64 `json:"limitBytes,omitempty"`
	// VolumeMode is a hint: Filesystem or Block.
	// +optional
	VolumeMode string `json:"volumeMode,omitempty"`
	// FSType is a hint for Filesystem volumes.
	// +optional
	FSType string `json:"fsType,omitempty"`
	// Stripes asks for a volume striped over that many devices of the pool,
	// as the StorageClass parameter stripes does: a count from 1 to 128
	// (lvm's limit), or "all" for one stripe per device of the pool, which
	// the node resolves. Empty: not striped. It never changes.
	// +optional
	// +kubebuilder:validation:Pattern=`^(all|[1-9]|[1-9][0-9]|1[01][0-9]|12[0-8])$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="stripes cannot change"
	Stripes string `json:"stripes,omitempty"`
	// StripeSizeBytes is the stripe size in bytes (StorageClass parameter
	// stripeSize, a power of two the pool takes); 0: the pool's default
	// (lvm: 64 KiB). It never changes.
	// +optional
	// +kubebuilder:validation:Minimum=4096
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="stripeSizeBytes cannot change"
	StripeSizeBytes int64 `json:"stripeSizeBytes,omitempty"`
	// Source, if set, is what the volume is created from (CSI
	// volume_content_source): the node makes it as a copy of that snapshot
	// or volume, in the source's pool on this node. It never changes.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="source cannot change"
	Source *VolumeSource `json:"source,omitempty"`
}

// SourceKind says what a VolumeSource names.
// +kubebuilder:validation:Enum=Snapshot;Volume
type SourceKind string

const (
	// SourceSnapshot: a snapshot id (a LocalSnapshot's name).
	SourceSnapshot SourceKind = "Snapshot"
	// SourceVolume: a volume id (a LocalVolume's name).
	SourceVolume SourceKind = "Volume"
)

// VolumeSource names the snapshot or volume a volume is created from.
type VolumeSource struct {
	Kind SourceKind `json:"kind"`
	// ID is the CSI snapshot id or volume id.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	ID string `json:"id"`
}

// LocalVolumeStatus is what the node reports.
type LocalVolumeStatus struct {
	// +optional
	Phase LocalVolumePhase `json:"phase,omitempty"`
	// DevicePath on the node, e.g. /dev/vg/lv.
	// +optional
	DevicePath string `json:"devicePath,omitempty"`
	// CurrentSizeBytes is the device's real size.
	// +optional
	CurrentSizeBytes int64 `json:"currentSizeBytes,omitempty"`
	// Code is the gRPC code name of the last failure (e.g. ResourceExhausted).
	// +optional
	Code string `json:"code,omitempty"`
	// Message explains the phase.
	// +optional
	Message string `json:"message,omitempty"`
	// ObservedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// LocalVolume is one carve volume on one node.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=lv;lvol
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Pool",type=string,JSONPath=`.spec.pool`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.currentSizeBytes`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Stripes",type=string,JSONPath=`.spec.stripes`,priority=1
// +kubebuilder:printcolumn:name="Volume",type=string,JSONPath=`.spec.volumeName`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type LocalVolume struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   LocalVolumeSpec   `json:"spec"`
	Status LocalVolumeStatus `json:"status,omitempty"`
}

// LocalVolumeList is a list of LocalVolumes.
// +kubebuilder:object:root=true
type LocalVolumeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []LocalVolume `json:"items"`
}

// LocalSnapshotSpec is what the controller asks of the node: a snapshot of
// one of its volumes.
type LocalSnapshotSpec struct {
	// SnapshotName is the CSI snapshot name this snapshot was created for;
	// the object's name is its snapshot id. It never changes.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="snapshotName cannot change"
	SnapshotName string `json:"snapshotName"`
	// NodeName is the node that holds the source volume, and so the snapshot.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="nodeName cannot change"
	NodeName string `json:"nodeName"`
	// Pool of the source volume on that node; empty means the node's default pool.
	// +optional
	Pool string `json:"pool,omitempty"`
	// SourceVolumeID is the CSI volume id (a LocalVolume's name) of the source.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="sourceVolumeID cannot change"
	SourceVolumeID string `json:"sourceVolumeID"`
}

// LocalSnapshotStatus is what the node reports.
type LocalSnapshotStatus struct {
	// Phase: Pending (the node has not acted), Ready (the snapshot exists)
	// or Failed (see code and message).
	// +optional
	Phase LocalVolumePhase `json:"phase,omitempty"`
	// SnapshotID is the snapshot's id on the node (the object's name).
	// +optional
	SnapshotID string `json:"snapshotID,omitempty"`
	// SizeBytes is the snapshot's size: its source's size when it was taken.
	// +optional
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// CreationTime is when the node took the snapshot.
	// +optional
	CreationTime *metav1.Time `json:"creationTime,omitempty"`
	// ReadyToUse: volumes can be created from the snapshot.
	// +optional
	ReadyToUse bool `json:"readyToUse,omitempty"`
	// Code is the gRPC code name of the last failure (e.g. NotFound).
	// +optional
	Code string `json:"code,omitempty"`
	// Message explains the phase.
	// +optional
	Message string `json:"message,omitempty"`
	// ObservedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// LocalSnapshot is one carve snapshot (an lvm-thin snapshot LV) on one node.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=lsnap
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.spec.sourceVolumeID`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.sizeBytes`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Snapshot",type=string,JSONPath=`.spec.snapshotName`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type LocalSnapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   LocalSnapshotSpec   `json:"spec"`
	Status LocalSnapshotStatus `json:"status,omitempty"`
}

// LocalSnapshotList is a list of LocalSnapshots.
// +kubebuilder:object:root=true
type LocalSnapshotList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []LocalSnapshot `json:"items"`
}

// PoolStatus is one pool's capacity.
type PoolStatus struct {
	Name string `json:"name"`
	// Not an enum: a node writes all its pools in one status update, so a type
	// the schema did not list would fail every write of that node and hide
	// all its capacity; and Helm never upgrades CRDs, so a list would lag
	// behind newer nodes. Every registered type must match the pattern
	// (pkg/backend/registry's tests read it from the generated CRD).

	// Type is the pool's backend type as its node reports it (lvm, pmem, ...).
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Type           string `json:"type"`
	TotalBytes     int64  `json:"totalBytes"`
	FreeBytes      int64  `json:"freeBytes"`
	MaxVolumeBytes int64  `json:"maxVolumeBytes"`
	Healthy        bool   `json:"healthy"`
	// +optional
	Message string `json:"message,omitempty"`
	// AlignBytes is the pool's size granularity in bytes (lvm: the extent
	// size). With the devices' free bytes it gives the largest volume of a
	// striped class (backend.StripedMax).
	// +optional
	AlignBytes int64 `json:"alignBytes,omitempty"`
	// Devices are the devices of an lvm pool (its physical volumes; for a
	// pool carve builds from the node's disks, those disks), in lvm's order,
	// missing ones included; other pools list none.
	// +optional
	// +listType=atomic
	Devices []PoolDevice `json:"devices,omitempty"`
	// Thin is a thin pool's real use (lvm-thin pools only): its capacity
	// figures count virtual bytes, this says what is really written.
	// +optional
	Thin *ThinPoolStatus `json:"thin,omitempty"`
}

// ThinPoolStatus is an lvm thin pool's real use and the rules its virtual
// capacity follows (issue 14).
type ThinPoolStatus struct {
	// DataBytes is the thin pool's data size.
	DataBytes int64 `json:"dataBytes"`
	// DataPercent and MetadataPercent are lvm's data_percent and
	// metadata_percent ("12.50"); empty while the pool is inactive.
	// +optional
	DataPercent string `json:"dataPercent,omitempty"`
	// +optional
	MetadataPercent string `json:"metadataPercent,omitempty"`
	// VirtualBytes are the virtual sizes of every thin volume in the pool.
	VirtualBytes int64 `json:"virtualBytes"`
	// Overprovision: the virtual sizes may add up to this times DataBytes ("2.5").
	Overprovision string `json:"overprovision"`
	// ThresholdPercent: at or above this data or metadata use the pool
	// takes no new volumes or expansions.
	ThresholdPercent int32 `json:"thresholdPercent"`
}

// PoolDevice is one disk of a pool.
type PoolDevice struct {
	// Path of the device on the node ("[unknown]" when missing).
	Path string `json:"path"`
	// UUID of its LVM physical volume; it names a missing device too.
	// +optional
	UUID      string `json:"uuid,omitempty"`
	SizeBytes int64  `json:"sizeBytes"`
	FreeBytes int64  `json:"freeBytes"`
	// Missing: the volume group knows the device but it is not there.
	// +optional
	Missing bool `json:"missing,omitempty"`
}

// NodeStorageStatus lists a node's pools.
type NodeStorageStatus struct {
	// DefaultPool is used when a request names none.
	// +optional
	DefaultPool string `json:"defaultPool,omitempty"`
	// +optional
	Pools []PoolStatus `json:"pools,omitempty"`
	// +optional
	UpdateTime metav1.Time `json:"updateTime,omitempty"`
	// Free and Total of the default pool, for kubectl's columns.
	// +optional
	FreeBytes int64 `json:"freeBytes,omitempty"`
	// +optional
	TotalBytes int64 `json:"totalBytes,omitempty"`
}

// NodeStorage is one node's capacity; its name is the node's name.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=nstor
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Default",type=string,JSONPath=`.status.defaultPool`
// +kubebuilder:printcolumn:name="Free",type=integer,JSONPath=`.status.freeBytes`
// +kubebuilder:printcolumn:name="Total",type=integer,JSONPath=`.status.totalBytes`
// +kubebuilder:printcolumn:name="Updated",type=date,JSONPath=`.status.updateTime`
type NodeStorage struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Status NodeStorageStatus `json:"status,omitempty"`
}

// NodeStorageList is a list of NodeStorages.
// +kubebuilder:object:root=true
type NodeStorageList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NodeStorage `json:"items"`
}

func init() {
	SchemeBuilder.Register(&LocalVolume{}, &LocalVolumeList{}, &LocalSnapshot{}, &LocalSnapshotList{},
		&NodeStorage{}, &NodeStorageList{})
}
