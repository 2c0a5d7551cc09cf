package cluster

import (
	"errors"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilnet "k8s.io/apimachinery/pkg/util/net"
)

// APIUnavailable reports whether err says the API server could not be
// reached or would not answer now (restarting, overloaded, throttling,
// timing out): a retry of the same call may succeed. CSI callers get
// Unavailable for it, which external-provisioner retries without giving up
// on the volume (a final code would let it forget a LocalVolume that the
// lost answer had created).
func APIUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		return apierrors.IsServiceUnavailable(err) || apierrors.IsTooManyRequests(err) || apierrors.IsTimeout(err) ||
			apierrors.IsServerTimeout(err) || apierrors.IsInternalError(err) || apierrors.IsUnexpectedServerError(err)
	}
	return utilnet.IsConnectionRefused(err) || utilnet.IsConnectionReset(err) || utilnet.IsProbableEOF(err) ||
		utilnet.IsHTTP2ConnectionLost(err) || utilnet.IsTimeout(err) || utilnet.IsNoRoutesError(err)
}
