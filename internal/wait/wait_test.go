package wait_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/wait"
)

func TestFor(t *testing.T) {
	var n atomic.Int32
	if err := wait.For(context.Background(), 5*time.Second, func() error {
		if n.Add(1) < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || n.Load() != 3 {
		t.Fatalf("err %v after %d calls", err, n.Load())
	}
	boom := errors.New("never")
	if err := wait.For(context.Background(), 120*time.Millisecond, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("timeout: err = %v, want the last error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := wait.For(ctx, time.Minute, func() error { return boom }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: err = %v", err)
	}
}

func TestHTTP(t *testing.T) {
	var up atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	if err := wait.HTTP(context.Background(), srv.URL, 150*time.Millisecond); err == nil {
		t.Fatal("a 503 counted as ready")
	}
	go func() { time.Sleep(100 * time.Millisecond); up.Store(true) }()
	if err := wait.HTTP(context.Background(), srv.URL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}
