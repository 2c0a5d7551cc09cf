package nodeagent

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/volume"
)

// codeOf maps an error from the volume layer to the gRPC code a CSI caller
// would get for it, the same mapping as pkg/csi's toStatus for the errors the
// node agent can meet (no mount errors here). Errors that already carry a
// gRPC status keep their code.
func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, backend.ErrNoSpace):
		return codes.ResourceExhausted
	case errors.Is(err, backend.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, backend.ErrExists), errors.Is(err, volume.ErrIncompatible), errors.Is(err, backend.ErrNotOwned):
		return codes.AlreadyExists
	case errors.Is(err, volume.ErrOutOfRange):
		return codes.OutOfRange
	case errors.Is(err, volume.ErrUnknownPool):
		return codes.InvalidArgument
	case errors.Is(err, backend.ErrUnavailable):
		return codes.Unavailable
	}
	return codes.Internal
}

// permanent reports whether retrying the same spec cannot help: the node
// reports the failure and waits for a new generation of the spec (or for the
// status to be reset, see Agent.Reconcile).
func permanent(c codes.Code) bool {
	switch c {
	case codes.ResourceExhausted, codes.InvalidArgument, codes.OutOfRange, codes.AlreadyExists,
		codes.NotFound, codes.FailedPrecondition:
		return true
	}
	return false
}

// permanentName is permanent for a code as stored in status.code.
func permanentName(name string) bool {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if c.String() == name {
			return permanent(c)
		}
	}
	return false
}
