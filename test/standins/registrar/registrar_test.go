package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/carve-csi/carve/test/standins/csitest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

const endpoint = "/var/lib/kubelet/plugins/carve.csi.dev/csi.sock"

// start runs the registrar against a fake CSI driver named name and returns the registration
// folder, run's result channel and a cancel function.
func start(t *testing.T, id *csitest.Identity) (string, <-chan error, context.CancelFunc) {
	t.Helper()
	reg := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	o := options{csiAddress: csitest.Serve(t, id), kubeletRegistrationPath: endpoint, pluginRegistrationPath: reg, timeout: 5 * time.Second}
	go func() { done <- run(ctx, o) }()
	t.Cleanup(cancel)
	return reg, done, cancel
}

// kubeletClient waits for the registration socket as kubelet's plugin watcher would and dials it.
func kubeletClient(t *testing.T, sock string, done <-chan error) registerapi.RegistrationClient {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("registrar stopped before creating %s: %v", sock, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no registration socket %s after 10 s", sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// WaitForReady: the socket file exists from bind(2), before listen(2); a call in between is
	// refused (seen under load), as kubelet's first dial can be, and kubelet retries.
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return registerapi.NewRegistrationClient(conn)
}

func TestRegistrarServesKubeletRegistration(t *testing.T) {
	id := &csitest.Identity{}
	id.SetName("carve.csi.dev", nil)
	reg, done, cancel := start(t, id)
	sock := filepath.Join(reg, "carve.csi.dev-reg.sock")
	kc := kubeletClient(t, sock, done)
	ctx, c := context.WithTimeout(context.Background(), 10*time.Second)
	defer c()

	info, err := kc.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatalf("GetInfo: %v", err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "carve.csi.dev" || info.Endpoint != endpoint {
		t.Errorf("GetInfo = type %q name %q endpoint %q, want %q %q %q", info.Type, info.Name, info.Endpoint, registerapi.CSIPlugin, "carve.csi.dev", endpoint)
	}
	if len(info.SupportedVersions) == 0 {
		t.Errorf("GetInfo lists no supported versions")
	}
	if _, err := kc.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatalf("NotifyRegistrationStatus(registered): %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("registrar stopped after a successful registration: %v", err)
	case <-time.After(200 * time.Millisecond):
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("registrar did not stop within 10 s of cancel")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("registration socket left behind after stop: stat = %v", err)
	}
}

func TestRegistrarStopsWhenKubeletRejects(t *testing.T) {
	id := &csitest.Identity{}
	id.SetName("carve.csi.dev", nil)
	reg, done, _ := start(t, id)
	kc := kubeletClient(t, filepath.Join(reg, "carve.csi.dev-reg.sock"), done)
	ctx, c := context.WithTimeout(context.Background(), 10*time.Second)
	defer c()
	if _, err := kc.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "bad endpoint"}); err != nil {
		t.Fatalf("NotifyRegistrationStatus(failed): %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, errRegistrationFailed) {
			t.Fatalf("run = %v, want errRegistrationFailed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("registrar kept running after kubelet reported a failed registration")
	}
}

func TestRegistrarReplacesStaleSocket(t *testing.T) {
	id := &csitest.Identity{}
	id.SetName("carve.csi.dev", nil)
	reg := t.TempDir()
	sock := filepath.Join(reg, "carve.csi.dev-reg.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	o := options{csiAddress: csitest.Serve(t, id), kubeletRegistrationPath: endpoint, pluginRegistrationPath: reg, timeout: 5 * time.Second}
	go func() { done <- run(ctx, o) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stale file not replaced by the registration socket within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := kubeletClient(t, sock, done).GetInfo(ctx, &registerapi.InfoRequest{}); err != nil {
		t.Fatalf("GetInfo on the replaced socket: %v", err)
	}
}

func TestRegistrarFailsWithoutDriverName(t *testing.T) {
	id := &csitest.Identity{}
	id.SetName("", status.Error(codes.Internal, "broken driver"))
	_, done, _ := start(t, id)
	select {
	case err := <-done:
		if err == nil || status.Code(errors.Unwrap(err)) != codes.Internal {
			t.Fatalf("run = %v, want the GetPluginInfo error (Internal)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("registrar did not fail within 10 s when GetPluginInfo fails")
	}
}

func TestRegistrarRejectsRelativeEndpoint(t *testing.T) {
	err := run(context.Background(), options{kubeletRegistrationPath: "csi.sock"})
	if err == nil {
		t.Fatal("run accepted a relative --kubelet-registration-path")
	}
}

// The driver's socket may come up after the registrar starts: it waits instead of failing.
func TestRegistrarWaitsForDriver(t *testing.T) {
	reg := t.TempDir()
	csiSock := filepath.Join(t.TempDir(), "late.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	o := options{csiAddress: csiSock, kubeletRegistrationPath: endpoint, pluginRegistrationPath: reg, timeout: time.Second}
	go func() { done <- run(ctx, o) }()
	time.Sleep(1500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("registrar gave up while the driver socket was missing: %v", err)
	default:
	}
	id := &csitest.Identity{}
	id.SetName("carve.csi.dev", nil)
	csitest.ServeAt(t, id, csiSock)
	kc := kubeletClient(t, filepath.Join(reg, "carve.csi.dev-reg.sock"), done)
	if _, err := kc.GetInfo(ctx, &registerapi.InfoRequest{}); err != nil {
		t.Fatalf("GetInfo: %v", err)
	}
}
