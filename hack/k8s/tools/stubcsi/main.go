// Command stubcsi is a minimal in-memory CSI controller for hack/k8s/smoke.sh: it lets the rig's
// external-provisioner and external-resizer be checked end to end without carve. Every node
// (topology segment KEY=NODE) has --capacity bytes; CreateVolume takes them from the first
// preferred (else requisite) node that has room, DeleteVolume gives them back, GetCapacity reports
// what is left, ControllerExpandVolume grows a volume; with --nodeid it also answers NodeGetInfo.
// Nothing is stored on disk.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type volume struct {
	node string
	size int64
}

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	name, key, nodeID string
	capacity          int64

	mu      sync.Mutex
	volumes map[string]volume
}

func (d *driver) used(node string) int64 {
	var n int64
	for _, v := range d.volumes {
		if v.node == node {
			n += v.size
		}
	}
	return n
}

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: "stub"}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	svc := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		svc(csi.PluginCapability_Service_CONTROLLER_SERVICE),
		svc(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}}},
	}}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	size := req.GetCapacityRange().GetRequiredBytes()
	if size == 0 {
		size = 1 << 30
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	resp := func(v volume) *csi.CreateVolumeResponse {
		return &csi.CreateVolumeResponse{Volume: &csi.Volume{
			VolumeId: req.GetName(), CapacityBytes: v.size,
			AccessibleTopology: []*csi.Topology{{Segments: map[string]string{d.key: v.node}}},
		}}
	}
	if v, ok := d.volumes[req.GetName()]; ok {
		return resp(v), nil
	}
	var nodes []string
	for _, t := range append(req.GetAccessibilityRequirements().GetPreferred(), req.GetAccessibilityRequirements().GetRequisite()...) {
		if n := t.GetSegments()[d.key]; n != "" {
			nodes = append(nodes, n)
		}
	}
	if len(nodes) == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "no topology segment with key %s", d.key)
	}
	for _, n := range nodes {
		if d.capacity-d.used(n) >= size {
			v := volume{node: n, size: size}
			d.volumes[req.GetName()] = v
			return resp(v), nil
		}
	}
	return nil, status.Errorf(codes.ResourceExhausted, "no room for %d bytes on %v", size, nodes)
}

func (d *driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.volumes, req.GetVolumeId())
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *driver) GetCapacity(_ context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	node := req.GetAccessibleTopology().GetSegments()[d.key]
	if node == "" {
		return &csi.GetCapacityResponse{}, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	free := d.capacity - d.used(node)
	return &csi.GetCapacityResponse{AvailableCapacity: free, MaximumVolumeSize: wrapperspb.Int64(free)}, nil
}

func (d *driver) ControllerExpandVolume(_ context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.volumes[req.GetVolumeId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s", req.GetVolumeId())
	}
	want := req.GetCapacityRange().GetRequiredBytes()
	if want > v.size {
		if d.capacity-d.used(v.node)+v.size < want {
			return nil, status.Errorf(codes.ResourceExhausted, "no room to grow %s to %d bytes", req.GetVolumeId(), want)
		}
		v.size = want
		d.volumes[req.GetVolumeId()] = v
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: v.size, NodeExpansionRequired: false}, nil
}

// NodeGetInfo is all of the Node service there is (served only with --nodeid): external-provisioner
// with --node-deployment asks it for the node's ID and topology.
func (d *driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             d.nodeID,
		AccessibleTopology: &csi.Topology{Segments: map[string]string{d.key: d.nodeID}},
	}, nil
}

func (d *driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

func main() {
	endpoint := flag.String("endpoint", "", "unix socket path to serve on")
	name := flag.String("drivername", "carve.csi.dev", "CSI driver name")
	key := flag.String("topology-key", "carve.csi.dev/node", "topology key whose value is the node name")
	capacity := flag.Int64("capacity", 10<<30, "bytes per node")
	nodeID := flag.String("nodeid", "", "serve NodeGetInfo as this node (for external-provisioner --node-deployment)")
	flag.Parse()
	if *endpoint == "" {
		log.Fatal("--endpoint is required")
	}
	_ = os.Remove(*endpoint)
	l, err := net.Listen("unix", *endpoint)
	if err != nil {
		log.Fatal(err)
	}
	d := &driver{name: *name, key: *key, nodeID: *nodeID, capacity: *capacity, volumes: map[string]volume{}}
	s := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		resp, err := h(ctx, req)
		fmt.Fprintf(os.Stderr, "%s %v -> %v\n", info.FullMethod, req, status.Code(err))
		return resp, err
	}))
	csi.RegisterIdentityServer(s, d)
	csi.RegisterControllerServer(s, d)
	if *nodeID != "" {
		csi.RegisterNodeServer(s, d)
	}
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
		s.Stop()
	}()
	if err := s.Serve(l); err != nil {
		log.Fatal(err)
	}
}
