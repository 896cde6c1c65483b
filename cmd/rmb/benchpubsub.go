package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/rmb-go/rmb/internal/bench"
)

// benchPubSub is rmb bench pubsub: events/s and delivery latency of
// topics to 1, 100 and 1000 subscriber twins (internal/bench/pubsub.go).
func benchPubSub(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "bench-pubsub", "[--subscribers 1,100,1000] [--duration 5s] [--publishers 4] [--size 256] [--public] [--json]")
	counts := fs.String("subscribers", "1,100,1000", "subscriber twins of each round, increasing, comma separated")
	duration := fs.Duration("duration", 5*time.Second, "publishing time of each round")
	publishers := fs.Int("publishers", 4, "concurrent Publish calls")
	size := fs.Int("size", 256, "payload bytes of each event (at least 8)")
	public := fs.Bool("public", false, "public topic: events in plain text, not encrypted per subscriber")
	asJSON := fs.Bool("json", false, "print the rounds as JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	var subs []int
	for _, f := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(e.stderr, "rmb bench pubsub: --subscribers: %q is not a count\n", f)
			return 2
		}
		subs = append(subs, n)
	}
	if *size < 8 || *publishers < 1 || *duration <= 0 {
		fmt.Fprintln(e.stderr, "rmb bench pubsub: --size must be at least 8, --publishers at least 1, --duration positive")
		return 2
	}
	rounds, err := bench.RunPubSub(ctx, bench.PubSubOptions{Subscribers: subs, Duration: *duration,
		Publishers: *publishers, PayloadSize: *size, Public: *public, Progress: e.stderr})
	if err != nil {
		return e.errorf("bench pubsub: %v", err)
	}
	if *asJSON {
		b, _ := json.MarshalIndent(rounds, "", "  ")
		fmt.Fprintln(e.stdout, string(b))
		return 0
	}
	fmt.Fprintf(e.stdout, "%-11s %8s %10s %13s %6s  %s\n", "subscribers", "events", "events/s", "deliveries/s", "lost", "latency (publish → subscriber)")
	for _, r := range rounds {
		fmt.Fprintf(e.stdout, "%-11d %8d %10.0f %13.0f %6d  %s\n", r.Subscribers, r.Events, r.EventsPerS, r.DeliveriesS, r.Lost, r.Latency)
	}
	return 0
}
