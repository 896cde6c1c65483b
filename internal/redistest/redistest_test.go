package redistest_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
)

func TestStartRestartKeepsAOFData(t *testing.T) {
	s := redistest.Start(t, &redistest.Options{AOF: true})
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer c.Close()
	if err := c.RPush(ctx, "k", "v1", "v2").Err(); err != nil {
		t.Fatal(err)
	}
	s.Restart(t)
	got, err := c.LRange(ctx, "k", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != "v1" || got[1] != "v2" {
		t.Fatalf("after restart k = %v", got)
	}
}
