// Package errcode maps the volume layer's errors to the gRPC codes a CSI
// caller acts on, for the CSI services and for the node agent, which reports
// them in LocalVolume status by name.
package errcode

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/volume"
)

// Of returns the code for err; errors that already carry a status keep theirs.
func Of(err error) codes.Code {
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
	case errors.Is(err, backend.ErrNoSpace), errors.Is(err, backend.ErrDegraded):
		// A degraded pool has no space it can deliver until an admin repairs
		// it: ResourceExhausted makes external-provisioner reschedule a
		// late-bound volume to another node instead of retrying this one.
		return codes.ResourceExhausted
	case errors.Is(err, backend.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, backend.ErrExists), errors.Is(err, volume.ErrIncompatible), errors.Is(err, backend.ErrNotOwned):
		return codes.AlreadyExists
	case errors.Is(err, volume.ErrOutOfRange), errors.Is(err, backend.ErrNotExpandable):
		return codes.OutOfRange
	case errors.Is(err, volume.ErrUnknownPool), errors.Is(err, backend.ErrCannotStripe), errors.Is(err, volume.ErrCannotSnapshot):
		return codes.InvalidArgument
	case errors.Is(err, backend.ErrInUse):
		return codes.FailedPrecondition
	case errors.Is(err, backend.ErrUnavailable):
		return codes.Unavailable
	}
	return codes.Internal
}

// Permanent reports whether retrying the same request cannot help.
func Permanent(c codes.Code) bool {
	switch c {
	case codes.ResourceExhausted, codes.InvalidArgument, codes.OutOfRange, codes.AlreadyExists,
		codes.NotFound, codes.FailedPrecondition:
		return true
	}
	return false
}

// ByName parses a code name as codes.Code.String() writes it.
func ByName(name string) (codes.Code, bool) {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if c.String() == name {
			return c, true
		}
	}
	return codes.Unknown, false
}

// PermanentName is Permanent for a code stored by name; unknown names are not permanent.
func PermanentName(name string) bool {
	c, ok := ByName(name)
	return ok && Permanent(c)
}
