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
