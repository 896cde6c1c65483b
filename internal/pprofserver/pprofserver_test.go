package pprofserver

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestServesProfilesUntilClosed(t *testing.T) {
	s, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + s.Addr() + "/debug/pprof/"
	get := func(path string) (int, string, error) {
		c := &http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(base + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	if code, body, err := get(""); err != nil || code != 200 || !strings.Contains(body, "goroutine") {
		t.Fatalf("index: %d %v\n%.200s", code, err, body)
	}
	if code, body, err := get("goroutine?debug=1"); err != nil || code != 200 || !strings.Contains(body, "TestServesProfilesUntilClosed") {
		t.Fatalf("goroutine profile: %d %v\n%.200s", code, err, body)
	}
	// A one-second CPU profile: a gzipped protobuf.
	if code, body, err := get("profile?seconds=1"); err != nil || code != 200 || !strings.HasPrefix(body, "\x1f\x8b") {
		t.Fatalf("cpu profile: %d %v, %d bytes", code, err, len(body))
	}
	if code, _, err := get("nosuchprofile"); err != nil || code != http.StatusNotFound {
		t.Fatalf("unknown profile: %d %v, want 404", code, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := get(""); err == nil {
		t.Fatal("still serving after Close")
	}
}

func TestBadAddress(t *testing.T) {
	s, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, addr := range []string{s.Addr(), "no-port", "256.0.0.1:1"} {
		if _, err := Listen(context.Background(), addr); err == nil || !strings.HasPrefix(err.Error(), "--pprof: ") {
			t.Errorf("Listen(%q) = %v, want a --pprof error", addr, err)
		}
	}
}
