// Command registrar is carve's STAND-IN for csi-node-driver-registrar, which the Go module proxy
// here does not serve. It is not the real kubernetes-csi sidecar and says so when it starts.
//
// It does the sidecar's job the way the manifests use it: it asks the CSI driver at
// --csi-address for its name (GetPluginInfo), serves kubelet's plugin-registration API
// (k8s.io/kubelet/pkg/apis/pluginregistration/v1) on <--plugin-registration-path>/<name>-reg.sock,
// answers GetInfo with the driver name and --kubelet-registration-path, and exits non-zero when
// kubelet reports that the registration failed (as the real registrar does, so the pod restarts
// it). On SIGTERM or SIGINT it removes its socket and exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// banner is the first line the stand-in prints: it must never pass for the real sidecar.
const banner = "carve STAND-IN for csi-node-driver-registrar (test/standins/registrar): not the real kubernetes-csi sidecar"

func main() {
	fmt.Fprintln(os.Stderr, banner)
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	klog.InitFlags(fs)
	var o options
	fs.StringVar(&o.csiAddress, "csi-address", "/run/csi/socket", "path of the CSI driver's socket")
	fs.StringVar(&o.kubeletRegistrationPath, "kubelet-registration-path", "", "path of the CSI driver's socket on the node, as kubelet sees it")
	fs.StringVar(&o.pluginRegistrationPath, "plugin-registration-path", "/registration", "folder of kubelet's plugin registration sockets")
	fs.DurationVar(&o.timeout, "timeout", time.Second, "timeout of the GetPluginInfo call")
	_ = fs.Parse(os.Args[1:])

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, o); err != nil {
		klog.ErrorS(err, "registrar stopped")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}
