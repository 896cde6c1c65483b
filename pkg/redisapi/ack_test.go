package redisapi_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/redisapi"
)

// ServeWith a Consumer takes each request into the consumer's processing
// list under a lease, and answers and acknowledges it in one transaction:
// the list ends empty and the answer is on the reply queue.
func TestServeWithConsumer(t *testing.T) {
	rdb := newRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := redisapi.NewClient(rdb)
	req, _ := json.Marshal(redisapi.IncomingRequest{Version: 1, Ref: "r1", Source: "41", Command: "echo",
		Data: redisapi.EncodeData([]byte("hi")), ReplyTo: redisapi.QueueReply, Expiration: 60, Now: time.Now().Unix()})
	rdb.LPush(ctx, redisapi.CommandQueue("echo"), req)
	inHandler := make(chan struct{})
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.ServeWith(sctx, "echo", func(_ context.Context, _ *redisapi.IncomingRequest, p []byte) ([]byte, error) {
			// While the handler runs, the request is in the processing
			// list and the consumer holds a lease.
			if n := rdb.LLen(ctx, redisapi.QueueTakenPrefix+"c1").Val(); n != 1 {
				t.Errorf("processing list holds %d while handling", n)
			}
			if s, err := rdb.ZScore(ctx, redisapi.KeyLeases, "c1").Result(); err != nil || s < float64(time.Now().UnixMilli()) {
				t.Errorf("lease %v %v", s, err)
			}
			close(inHandler)
			return append([]byte("echo:"), p...), nil
		}, &redisapi.ServeOptions{Consumer: "c1", Visibility: 10 * time.Second})
	}()
	res, err := rdb.BRPop(ctx, 10*time.Second, redisapi.QueueReply).Result()
	if err != nil {
		t.Fatal(err)
	}
	<-inHandler
	var out redisapi.OutgoingResponse
	json.Unmarshal([]byte(res[1]), &out)
	if p, _ := out.Payload(); out.Ref != "r1" || out.Destination != "41" || string(p) != "echo:hi" {
		t.Fatalf("answer %s", res[1])
	}
	if n := rdb.LLen(ctx, redisapi.QueueTakenPrefix+"c1").Val(); n != 0 {
		t.Fatalf("processing list holds %d after the answer", n)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Bad options are refused.
	for _, o := range []*redisapi.ServeOptions{{Consumer: "has space"}, {Consumer: "c", Visibility: time.Second}} {
		if err := c.ServeWith(ctx, "echo", nil, o); err == nil {
			t.Errorf("ServeWith(%+v) accepted", o)
		}
	}
}
