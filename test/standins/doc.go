// Package standins holds carve's own stand-ins for the sidecar images the Go module proxy does
// not serve (csi-node-driver-registrar, livenessprobe) and for the pause image, so the cluster
// test can run the shipped manifests unchanged. They are NOT the real kubernetes-csi sidecars:
// each says so in the first line it prints. hack/image/build.sh builds them into images tagged
// with the names deploy/kubernetes uses.
package standins
