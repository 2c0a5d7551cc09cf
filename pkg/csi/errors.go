package csi

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/carve-csi/carve/pkg/errcode"
	"github.com/carve-csi/carve/pkg/mounter"
)

// toStatus maps an error from below the gRPC boundary to a status with the
// code a CSI caller acts on. Errors that already are statuses pass through.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := errcode.Of(err)
	switch {
	case errors.Is(err, mounter.ErrMountedElsewhere), errors.Is(err, mounter.ErrIncompatibleMount):
		code = codes.AlreadyExists
	case errors.Is(err, mounter.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, mounter.ErrUnsupportedFilesystem):
		code = codes.InvalidArgument
	case errors.Is(err, mounter.ErrFilesystemMismatch), errors.Is(err, mounter.ErrNotMounted),
		errors.Is(err, mounter.ErrNotBlockDevice), errors.Is(err, mounter.ErrStaleMount),
		errors.Is(err, mounter.ErrDAXUnsupported), errors.Is(err, mounter.ErrDeviceTooSmall):
		code = codes.FailedPrecondition
	}
	return status.Error(code, err.Error())
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

func wrapInt64(v int64) *wrapperspb.Int64Value { return wrapperspb.Int64(v) }
