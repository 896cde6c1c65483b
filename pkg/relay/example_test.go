package relay_test

import (
	"log/slog"
	"net/http"
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
