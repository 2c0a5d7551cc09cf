package errcode

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

func TestOf(t *testing.T) {
	for _, tc := range []struct {
		err       error
		code      codes.Code
		permanent bool
	}{
		{fmt.Errorf("x: %w", backend.ErrNoSpace), codes.ResourceExhausted, true},
		{fmt.Errorf("x: %w", backend.ErrDegraded), codes.ResourceExhausted, true}, // reschedule, do not retry here
		{fmt.Errorf("x: %w", volume.ErrUnknownPool), codes.InvalidArgument, true},
		{fmt.Errorf("x: %w", volume.ErrOutOfRange), codes.OutOfRange, true},
		{fmt.Errorf("x: %w", backend.ErrNotExpandable), codes.OutOfRange, true},
		{fmt.Errorf("x: %w", volume.ErrIncompatible), codes.AlreadyExists, true},
		{fmt.Errorf("x: %w", backend.ErrExists), codes.AlreadyExists, true},
		{fmt.Errorf("x: %w", backend.ErrNotOwned), codes.AlreadyExists, true},
		{fmt.Errorf("x: %w", backend.ErrNotFound), codes.NotFound, true},
		{fmt.Errorf("x: %w", backend.ErrInUse), codes.FailedPrecondition, true},
		{fmt.Errorf("x: %w", backend.ErrUnavailable), codes.Unavailable, false},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), codes.DeadlineExceeded, false},
		{fmt.Errorf("x: %w", context.Canceled), codes.Canceled, false},
		{errors.New("lvcreate: exit status 5"), codes.Internal, false},
		{status.Error(codes.FailedPrecondition, "x"), codes.FailedPrecondition, true},
	} {
		if got := Of(tc.err); got != tc.code {
			t.Errorf("Of(%v) = %v, want %v", tc.err, got, tc.code)
		}
		if got := PermanentName(tc.code.String()); got != tc.permanent {
			t.Errorf("PermanentName(%s) = %v, want %v", tc.code, got, tc.permanent)
		}
	}
	if Of(nil) != codes.OK || PermanentName("") || PermanentName("Bogus") {
		t.Fatal("nil error / empty or unknown code name")
	}
}

func TestByNameRoundTrips(t *testing.T) {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if got, ok := ByName(c.String()); !ok || got != c {
			t.Errorf("ByName(%q) = %v, %v", c.String(), got, ok)
		}
	}
	if _, ok := ByName("Bogus"); ok {
		t.Error("ByName accepted an unknown name")
	}
}
