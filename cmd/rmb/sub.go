package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

func init() {
	register("sub", "subscribe to a twin's topics through the local peer and print events as they arrive", sub)
}

func sub(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "sub", "--twin OWNER --topic PATTERN [--queue Q] [--level confirmed] [--lease 300s] [--count N] [--keep] [--redis URL]")
	owner := fs.Uint("twin", 0, "the twin whose topics to follow (required)")
	pattern := fs.String("topic", "", "topic pattern: '+' is one level, a last '#' any number (required)")
	queue := fs.String("queue", "", "Redis list the peer pushes events on; default a new rmb.events.<random>")
	level := fs.String("level", redisapi.LevelAtMostOnce, "at-most-once or confirmed (the owner's peer sends every event confirmed)")
	lease := fs.Duration("lease", peer.DefaultLease, "lease asked of the owner; the peer renews it at half its term")
	count := fs.Int("count", 0, "exit after this many events (0: until interrupted)")
	keep := fs.Bool("keep", false, "leave the subscription in place on exit (the peer keeps renewing it)")
	redisURL := fs.String("redis", defaultRedis, "Redis of the local rmb-peer")
	asJSON := fs.Bool("json", false, "print each event as the JSON the peer pushed")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	var err error
	switch {
	case *owner == 0 || *owner > 1<<32-1:
		err = errors.New("--twin: want the owner's twin id")
	case *count < 0:
		err = fmt.Errorf("--count %d is negative", *count)
	default:
		if err = peer.CheckTopicPattern(*pattern); err != nil {
			err = fmt.Errorf("--topic: %w", err)
		}
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "rmb sub: %v\n", err)
		fs.Usage()
		return 2
	}
	if *queue == "" {
		var b [8]byte
		rand.Read(b[:])
		*queue = "rmb.events." + hex.EncodeToString(b[:])
	}
	rdb, err := redisClient(*redisURL)
	if err != nil {
		return e.errorf("sub: --redis: %v", err)
	}
	defer rdb.Close()
	c := redisapi.NewClient(rdb)
	res, err := c.Subscribe(ctx, uint32(*owner), *pattern, *queue, &redisapi.SubscribeOptions{Level: *level, Lease: *lease})
	if err != nil {
		var re *redisapi.Error
		if errors.As(err, &re) {
			return e.errorf("sub: refused: %d %s", re.Code, re.Message)
		}
		return e.errorf("sub: %v", err)
	}
	fmt.Fprintf(e.stderr, "subscribed to %q of twin %d (lease %ds) on queue %s\n", *pattern, *owner, res.Lease, *queue)
	if !*keep {
		defer func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 40*time.Second)
			defer cancel()
			if _, err := c.Unsubscribe(uctx, uint32(*owner), *pattern, *queue); err != nil {
				fmt.Fprintf(e.stderr, "rmb sub: unsubscribe: %v\n", err)
			}
			rdb.Del(uctx, *queue)
		}()
	}
	for n := 0; *count == 0 || n < *count; {
		ev, err := c.NextEvent(ctx, *queue, time.Second)
		if ctx.Err() != nil {
			return 0
		}
		if err != nil {
			return e.errorf("sub: %v", err)
		}
		if ev == nil {
			continue
		}
		n++
		if *asJSON {
			b, _ := json.Marshal(ev)
			fmt.Fprintln(e.stdout, string(b))
			continue
		}
		data, _ := ev.Payload()
		kind := "encrypted"
		if ev.Public {
			kind = "public"
		}
		fmt.Fprintf(e.stdout, "%s twin %d %s (%s): %s\n", time.Unix(ev.Now, 0).UTC().Format(time.RFC3339), ev.Owner, ev.Topic, kind, data)
	}
	return 0
}
