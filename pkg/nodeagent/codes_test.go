package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/volume"
)

func TestCodeOf(t *testing.T) {
	for _, tc := range []struct {
		err       error
		code      codes.Code
		permanent bool
	}{
		{fmt.Errorf("x: %w", backend.ErrNoSpace), codes.ResourceExhausted, true},
		{fmt.Errorf("x: %w", volume.ErrUnknownPool), codes.InvalidArgument, true},
		{fmt.Errorf("x: %w", volume.ErrOutOfRange), codes.OutOfRange, true},
		{fmt.Errorf("x: %w", volume.ErrIncompatible), codes.AlreadyExists, true},
		{fmt.Errorf("x: %w", backend.ErrExists), codes.AlreadyExists, true},
		{fmt.Errorf("x: %w", backend.ErrNotOwned), codes.AlreadyExists, true},
		{fmt.Errorf("x: %w", backend.ErrNotFound), codes.NotFound, true},
		{fmt.Errorf("x: %w", backend.ErrUnavailable), codes.Unavailable, false},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), codes.DeadlineExceeded, false},
		{fmt.Errorf("x: %w", context.Canceled), codes.Canceled, false},
		{errors.New("lvcreate: exit status 5"), codes.Internal, false},
		{status.Error(codes.FailedPrecondition, "x"), codes.FailedPrecondition, true},
	} {
		if got := codeOf(tc.err); got != tc.code {
			t.Errorf("codeOf(%v) = %v, want %v", tc.err, got, tc.code)
		}
		if got := permanentName(tc.code.String()); got != tc.permanent {
			t.Errorf("permanentName(%s) = %v, want %v", tc.code, got, tc.permanent)
		}
	}
	if codeOf(nil) != codes.OK || permanentName("") || permanentName("Bogus") {
		t.Fatal("nil error / empty or unknown code name")
	}
}
