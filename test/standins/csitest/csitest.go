// Package csitest serves a fake CSI Identity service on a unix socket for the stand-ins' tests.
package csitest

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Identity is a fake CSI Identity server whose answers a test sets.
type Identity struct {
	csi.UnimplementedIdentityServer

	mu         sync.Mutex
	name       string
	infoErr    error
	ready      *wrapperspb.BoolValue
	probeErr   error
	probeCalls int
}

// SetName sets the driver name GetPluginInfo returns; err, when set, is returned instead.
func (f *Identity) SetName(name string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.name, f.infoErr = name, err
}

// SetProbe sets Probe's answer: ready nil means the field is absent (the plugin is ready).
func (f *Identity) SetProbe(ready *bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ready, f.probeErr = nil, err
	if ready != nil {
		f.ready = wrapperspb.Bool(*ready)
	}
}

// ProbeCalls returns how many Probe calls arrived.
func (f *Identity) ProbeCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.probeCalls
}

// GetPluginInfo implements csi.IdentityServer.
func (f *Identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.infoErr != nil {
		return nil, f.infoErr
	}
	return &csi.GetPluginInfoResponse{Name: f.name, VendorVersion: "test"}, nil
}

// Probe implements csi.IdentityServer.
func (f *Identity) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.probeCalls++
	if f.probeErr != nil {
		return nil, f.probeErr
	}
	return &csi.ProbeResponse{Ready: f.ready}, nil
}

// Serve starts f on a unix socket in a temporary folder and returns the socket's path; the
// server stops when the test ends.
func Serve(t *testing.T, f *Identity) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	ServeAt(t, f, sock)
	return sock
}

// ServeAt starts f on a unix socket at sock; the server stops when the test ends.
func ServeAt(t *testing.T, f *Identity, sock string) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen %s: %v", sock, err)
	}
	s := grpc.NewServer()
	csi.RegisterIdentityServer(s, f)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
}
