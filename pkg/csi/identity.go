package csi

import (
	"context"
	"errors"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend"
)

// Identity serves the CSI Identity service.
type Identity struct {
	csi.UnimplementedIdentityServer
	Name, Version string
	// Ready reports whether the driver can serve (its pools can be read).
	Ready func(context.Context) error
	// Controller is true when a Controller service is served too.
	Controller bool
}

func (i *Identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: i.Name, VendorVersion: i.Version}, nil
}

func (i *Identity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	svc := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	caps := []*csi.PluginCapability{svc(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS)}
	if i.Controller {
		caps = append(caps, svc(csi.PluginCapability_Service_CONTROLLER_SERVICE),
			&csi.PluginCapability{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{
				Type: csi.PluginCapability_VolumeExpansion_ONLINE}}})
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe answers ready unless Ready fails for a reason other than degraded
// pools. A degraded pool (backend.ErrDegraded: a VG missing a PV) keeps the
// driver ready even when every pool is degraded, because livenessprobe
// restarts the container on a failed Probe, and a restart brings back no disk
// while it interrupts unmounting and deleting the volumes that still work. The
// pool says it is degraded, with the reason, where schedulers and admins look:
// NodeStorage (healthy=false, message), GetCapacity (0), the carve_pool_degraded
// metric and this log line. A pool that cannot be read at all (ErrUnavailable,
// a tool missing) still fails Probe with FailedPrecondition, as before.
func (i *Identity) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if i.Ready != nil {
		if err := i.Ready(ctx); err != nil {
			if ctx.Err() != nil {
				// The caller's deadline or cancel, not a fault of the driver: say so
				// (Canceled, DeadlineExceeded), not FailedPrecondition "not ready".
				return nil, status.FromContextError(ctx.Err()).Err()
			}
			if !onlyDegraded(err) {
				return nil, status.Errorf(codes.FailedPrecondition, "not ready: %v", err)
			}
			klog.InfoS("Probe: ready, with a degraded pool that cannot create volumes", "reason", err.Error())
		}
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// onlyDegraded reports whether err, and every error joined into it
// (errors.Join), is a degraded pool.
func onlyDegraded(err error) bool {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if !onlyDegraded(e) {
				return false
			}
		}
		return len(j.Unwrap()) > 0
	}
	return errors.Is(err, backend.ErrDegraded)
}
