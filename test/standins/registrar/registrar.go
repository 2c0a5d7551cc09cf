package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	csirpc "github.com/kubernetes-csi/csi-lib-utils/rpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// options are the registrar's flags.
type options struct {
	csiAddress              string
	kubeletRegistrationPath string
	pluginRegistrationPath  string
	timeout                 time.Duration
}

// errRegistrationFailed: kubelet reported through NotifyRegistrationStatus that it could not
// register the driver.
var errRegistrationFailed = errors.New("kubelet reported that the plugin registration failed")

// supportedVersions are the CSI versions the registration announces (as the real registrar does).
var supportedVersions = []string{"1.0.0"}

// registrationServer answers kubelet's plugin watcher.
type registrationServer struct {
	registerapi.UnimplementedRegistrationServer
	driverName string
	endpoint   string
	failed     chan error
}

// GetInfo tells kubelet the plugin's type, the driver name and the driver socket's node path.
func (s *registrationServer) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	klog.InfoS("kubelet asked for the plugin info", "driver", s.driverName, "endpoint", s.endpoint)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.driverName,
		Endpoint:          s.endpoint,
		SupportedVersions: supportedVersions,
	}, nil
}

// NotifyRegistrationStatus records kubelet's verdict; a failure stops the registrar.
func (s *registrationServer) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !st.PluginRegistered {
		err := fmt.Errorf("%w: %s", errRegistrationFailed, st.Error)
		select {
		case s.failed <- err:
		default:
		}
		return &registerapi.RegistrationStatusResponse{}, nil
	}
	klog.InfoS("kubelet registered the plugin", "driver", s.driverName)
	return &registerapi.RegistrationStatusResponse{}, nil
}

// socketPath is where kubelet's plugin watcher looks for the driver's registration socket.
func socketPath(dir, driverName string) string {
	return filepath.Join(dir, driverName+"-reg.sock")
}

// run registers the CSI driver at o.csiAddress with kubelet until ctx ends (nil) or kubelet
// reports a failed registration (errRegistrationFailed).
func run(ctx context.Context, o options) error {
	if !filepath.IsAbs(o.kubeletRegistrationPath) {
		return fmt.Errorf("--kubelet-registration-path %q must be an absolute path", o.kubeletRegistrationPath)
	}
	conn, err := grpc.NewClient(dialTarget(o.csiAddress), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("CSI address %s: %w", o.csiAddress, err)
	}
	defer conn.Close()
	name, err := driverName(ctx, conn, o)
	if err != nil {
		return err
	}
	klog.InfoS("CSI driver found", "driver", name, "csiAddress", o.csiAddress)

	sock := socketPath(o.pluginRegistrationPath, name)
	// A socket left by an earlier run would make Listen fail with "address in use".
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", sock, err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	defer os.Remove(sock)

	srv := &registrationServer{driverName: name, endpoint: o.kubeletRegistrationPath, failed: make(chan error, 1)}
	g := grpc.NewServer()
	registerapi.RegisterRegistrationServer(g, srv)
	served := make(chan error, 1)
	go func() { served <- g.Serve(l) }()
	klog.InfoS("serving the plugin registration API", "socket", sock)

	select {
	case <-ctx.Done():
		g.Stop()
		return nil
	case err := <-srv.failed:
		// Graceful: kubelet gets its NotifyRegistrationStatus answer before the exit.
		g.GracefulStop()
		return err
	case err := <-served:
		return fmt.Errorf("registration server on %s: %w", sock, err)
	}
}

// dialTarget turns a socket path (or a unix:// address) into a gRPC target.
func dialTarget(addr string) string {
	if strings.HasPrefix(addr, "unix:") {
		return addr
	}
	return "unix:" + addr
}

// driverName asks the driver for its name, waiting while its socket is not up yet (Unavailable:
// the driver's container may start after this one), each call bounded by o.timeout.
func driverName(ctx context.Context, conn *grpc.ClientConn, o options) (string, error) {
	for {
		callCtx, cancel := context.WithTimeout(ctx, o.timeout)
		name, err := csirpc.GetDriverName(callCtx, conn)
		cancel()
		if err == nil {
			return name, nil
		}
		if status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded {
			return "", fmt.Errorf("GetPluginInfo from %s: %w", o.csiAddress, err)
		}
		klog.InfoS("waiting for the CSI driver", "csiAddress", o.csiAddress, "err", err)
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("GetPluginInfo from %s: %w (last error: %v)", o.csiAddress, ctx.Err(), err)
		case <-time.After(time.Second):
		}
	}
}
