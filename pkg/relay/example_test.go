package relay_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/registrar"
	"github.com/rmb-go/rmb/pkg/relay"
)

// A relay for relay.example, looking twins up in a registrar and keeping
// offline queues in Redis.
func ExampleNew() {
	dir := registrar.NewClient("https://registrar.example", nil)
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	r, err := relay.New(&relay.Options{
		Domains:   []string{"relay.example"},
		Directory: dir,
		Store:     relay.NewRedisStore(rdb, nil),
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, nil)),
		RateLimit: &relay.RateLimit{Messages: 1000},
	})
	if err != nil {
		panic(err)
	}
	http.ListenAndServe(":8080", r.Handler())
}

// Handler serves everything on one port: WebSocket sessions, federation,
// the status page, /metrics and /healthz. This one runs in-process with a
// registrar, as the tests do.
func ExampleRelay_Handler() {
	reg := registrar.NewServer(nil)
	rs := httptest.NewServer(reg.Handler())
	defer rs.Close()
	defer reg.Close()

	r, err := relay.New(&relay.Options{
		Domains:   []string{"relay.example"},
		Directory: registrar.NewClient(rs.URL, nil),
		Version:   "v1.0.0",
	})
	if err != nil {
		panic(err)
	}
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	defer r.Shutdown(context.Background())

	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("healthz: %s", body)
	fmt.Println("sessions:", r.Stats().Sessions)
	// Output:
	// healthz: ok
	// sessions: 0
}
