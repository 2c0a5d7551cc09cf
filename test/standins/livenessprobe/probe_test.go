package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/carve-csi/carve/test/standins/csitest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func TestHealthz(t *testing.T) {
	yes, no := true, false
	cases := []struct {
		name     string
		ready    *bool
		err      error
		wantCode int
		wantBody string
	}{
		{"ready", &yes, nil, http.StatusOK, "ok"},
		{"ready field absent means ready", nil, nil, http.StatusOK, "ok"},
		{"not ready", &no, nil, http.StatusInternalServerError, "not ready"},
		{"probe error", nil, status.Error(codes.FailedPrecondition, "pool lvm missing"), http.StatusInternalServerError, "pool lvm missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := &csitest.Identity{}
			id.SetProbe(c.ready, c.err)
			sock := csitest.Serve(t, id)
			conn, err := grpc.NewClient(dialTarget(sock), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			srv := httptest.NewServer(&prober{conn: conn, timeout: 5 * time.Second, csiAddress: sock})
			defer srv.Close()

			resp, err := http.Get(srv.URL + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.wantCode || !strings.Contains(string(body), c.wantBody) {
				t.Errorf("/healthz = %d %q, want %d containing %q", resp.StatusCode, body, c.wantCode, c.wantBody)
			}
			if id.ProbeCalls() != 1 {
				t.Errorf("CSI Probe called %d times, want 1", id.ProbeCalls())
			}
		})
	}
}

// A driver whose socket is gone is not healthy.
func TestHealthzDriverDown(t *testing.T) {
	sock := t.TempDir() + "/missing.sock"
	conn, err := grpc.NewClient(dialTarget(sock), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rec := httptest.NewRecorder()
	(&prober{conn: conn, timeout: 2 * time.Second, csiAddress: sock}).ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != http.StatusInternalServerError {
		t.Errorf("/healthz with no driver = %d %q, want 500", rec.Code, rec.Body.String())
	}
}

// A driver that starts late (carve-csi under emulation takes tens of seconds) is healthy within
// about a second of its socket appearing, however long the probe failed before: the connection
// retries at most every second (issue 11's rig). With gRPC's default backoff the retry after five
// failed seconds is 3-7 s away and the probe right after the driver came up failed.
func TestHealthzDriverStartsLate(t *testing.T) {
	sock := t.TempDir() + "/late.sock"
	conn, err := dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	p := &prober{conn: conn, timeout: 200 * time.Millisecond, csiAddress: sock}
	get := func() int {
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		return rec.Code
	}
	for end := time.Now().Add(6 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		if code := get(); code != http.StatusInternalServerError {
			t.Fatalf("/healthz with no driver yet = %d, want 500", code)
		}
	}
	csitest.ServeAt(t, &csitest.Identity{}, sock)
	deadline := time.Now().Add(1500 * time.Millisecond)
	for get() != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("/healthz still failing 1.5 s after the driver started serving")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
