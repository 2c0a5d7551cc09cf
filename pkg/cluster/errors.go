package cluster

import (
	"errors"
	"io"
	"strings"
	"syscall"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilnet "k8s.io/apimachinery/pkg/util/net"
)

// APIUnavailable reports whether err says the API server could not be
// reached or would not answer now (restarting, overloaded, throttling,
// timing out, the connection lost mid-request): a retry of the same call may
// succeed. CSI callers get Unavailable for it, which external-provisioner
// retries without giving up on the volume (a final code would let it forget a
// LocalVolume that the lost answer had created).
//
// err may be wrapped: utilnet.IsProbableEOF compares io.EOF and
// io.ErrUnexpectedEOF by identity and one message by equality, so a body cut
// short by a restarting API server ("unexpected error when reading response
// body ... unexpected EOF", client-go's rest.Request, wrapped by carve) is
// checked with errors.Is here (issue 13: TestAPIServerRestartMidBurst saw
// it end CreateVolume with Internal).
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
		utilnet.IsHTTP2ConnectionLost(err) || utilnet.IsTimeout(err) || utilnet.IsNoRoutesError(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.EPIPE) ||
		strings.Contains(err.Error(), "can't write HTTP request on broken connection")
}
