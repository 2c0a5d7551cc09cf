package csi

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/errcode"
)

// A gRPC server's context is canceled, not timed out, when the caller's
// deadline passes (the client resets the stream first): such a call still
// answers DeadlineExceeded; a cancel long before the deadline stays Canceled,
// and other codes pass through.
func TestCallerDeadline(t *testing.T) {
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Controller/CreateVolume"}
	waitForCancel := func(ctx context.Context, _ any) (any, error) {
		<-ctx.Done()
		return nil, status.Error(errcode.Of(ctx.Err()), ctx.Err().Error())
	}
	for _, tc := range []struct {
		name     string
		deadline time.Duration
		handler  grpc.UnaryHandler
		want     codes.Code
	}{
		{"canceled at the deadline", deadlineSlack / 2, waitForCancel, codes.DeadlineExceeded},
		{"canceled long before the deadline", time.Hour, waitForCancel, codes.Canceled},
		{"other error", deadlineSlack / 2, func(context.Context, any) (any, error) {
			return nil, status.Error(codes.NotFound, "no")
		}, codes.NotFound},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), tc.deadline)
		time.AfterFunc(100*time.Millisecond, cancel)
		_, err := callerDeadline(ctx, nil, info, tc.handler)
		cancel()
		if status.Code(err) != tc.want {
			t.Errorf("%s: got %v, want %s", tc.name, err, tc.want)
		}
	}
	// No deadline: a cancel is a cancel.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := callerDeadline(ctx, nil, info, waitForCancel); status.Code(err) != codes.Canceled {
		t.Errorf("no deadline: got %v, want Canceled", err)
	}
}
