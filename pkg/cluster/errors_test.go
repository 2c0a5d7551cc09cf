package cluster

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"syscall"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// TestAPIUnavailable: every way a call can lose the API server is retryable,
// wrapped as carve wraps it; answers the server meant are not.
func TestAPIUnavailable(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("create LocalVolume carve-x: %w", err) }
	lv := schema.GroupResource{Group: "carve.csi.dev", Resource: "localvolumes"}
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		// client-go's rest.Request when the API server dies mid-answer
		// (found by TestAPIServerRestartMidBurst: it ended CreateVolume with Internal).
		{"body cut short", wrap(fmt.Errorf("unexpected error when reading response body. Please retry. Original error: %w", io.ErrUnexpectedEOF)), true},
		{"EOF", wrap(&url.Error{Op: "Post", URL: "https://127.0.0.1:6443", Err: io.EOF}), true},
		{"EOF wrapped in the url.Error", wrap(&url.Error{Op: "Post", URL: "https://x", Err: fmt.Errorf("read: %w", io.EOF)}), true},
		{"broken pipe", wrap(&url.Error{Op: "Post", URL: "https://x", Err: fmt.Errorf("write tcp: %w", syscall.EPIPE)}), true},
		{"broken connection", wrap(errors.New("Post \"https://x\": http: can't write HTTP request on broken connection")), true},
		{"connection refused", wrap(&url.Error{Op: "Get", URL: "https://x", Err: fmt.Errorf("dial: %w", syscall.ECONNREFUSED)}), true},
		{"connection reset", wrap(&url.Error{Op: "Get", URL: "https://x", Err: fmt.Errorf("read: %w", syscall.ECONNRESET)}), true},
		{"GOAWAY", wrap(errors.New("http2: server sent GOAWAY and closed the connection; LastStreamID=1")), true},
		{"too many requests", wrap(apierrors.NewTooManyRequests("slow down", 1)), true},
		{"service unavailable", wrap(apierrors.NewServiceUnavailable("restarting")), true},
		{"server timeout", wrap(apierrors.NewServerTimeout(lv, "create", 1)), true},
		{"not found", wrap(apierrors.NewNotFound(lv, "carve-x")), false},
		{"conflict", wrap(apierrors.NewConflict(lv, "carve-x", errors.New("changed"))), false},
		{"forbidden", wrap(apierrors.NewForbidden(lv, "carve-x", errors.New("RBAC"))), false},
		{"invalid", wrap(apierrors.NewBadRequest("spec.sizeBytes: must be positive")), false},
		{"other", wrap(errors.New("no room on any node")), false},
		{"nil", nil, false},
	} {
		if got := APIUnavailable(c.err); got != c.want {
			t.Errorf("%s: APIUnavailable(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}
