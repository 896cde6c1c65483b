package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

func init() {
	register("pub", "publish an event on one of this twin's topics through the local peer", pub)
}

func pub(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "pub", "--topic TOPIC --data DATA [--public] [--confirm] [--ttl 60] [--redis URL]")
	topic := fs.String("topic", "", "topic name, levels separated by '/', no wildcard (required)")
	data := fs.String("data", "", "payload, sent as is")
	public := fs.Bool("public", false, "send in plain text instead of encrypted for each subscriber")
	confirm := fs.Bool("confirm", false, "each subscriber's peer acknowledges; what is not acknowledged within the TTL is dead-lettered")
	ttl := &ttlFlag{d: 60 * time.Second}
	fs.Var(ttl, "ttl", "time to live of the events, seconds (30) or a duration (90s), 1s to 30m")
	schema := fs.String("schema", "", "schema of the payload, e.g. application/json")
	redisURL := fs.String("redis", defaultRedis, "Redis of the local rmb-peer")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if err := peer.CheckTopic(*topic); err != nil {
		fmt.Fprintf(e.stderr, "rmb pub: --topic: %v\n", err)
		fs.Usage()
		return 2
	}
	ttlSecs, _, err := ttl.check("ttl")
	if err != nil {
		fmt.Fprintf(e.stderr, "rmb pub: %v\n", err)
		return 2
	}
	rdb, err := redisClient(*redisURL)
	if err != nil {
		return e.errorf("pub: --redis: %v", err)
	}
	defer rdb.Close()
	res, err := redisapi.NewClient(rdb).Publish(ctx, *topic, []byte(*data), &redisapi.PublishOptions{
		Public: *public, Confirm: *confirm, TTL: time.Duration(ttlSecs) * time.Second, Schema: *schema})
	if err != nil {
		var re *redisapi.Error
		if errors.As(err, &re) {
			return e.errorf("pub: the peer refused: %d %s", re.Code, re.Message)
		}
		return e.errorf("pub: %v", err)
	}
	if *asJSON {
		b, _ := json.Marshal(res)
		fmt.Fprintln(e.stdout, string(b))
		return 0
	}
	fmt.Fprintf(e.stdout, "published %s on %q: %d subscribers, %d sent, %d failed\n", res.UID, *topic, res.Subscribers, res.Sent, res.Failed)
	return 0
}
