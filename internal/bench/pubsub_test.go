package bench

import (
	"context"
	"testing"
	"time"
)

// A short run delivers every event to every subscriber and reports it.
func TestRunPubSub(t *testing.T) {
	rounds, err := RunPubSub(context.Background(), PubSubOptions{Subscribers: []int{1, 3}, Duration: 300 * time.Millisecond, Publishers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(rounds) != 2 {
		t.Fatalf("%d rounds, want 2", len(rounds))
	}
	for _, r := range rounds {
		if r.Events == 0 || r.Lost != 0 || r.Delivered != r.Events*r.Subscribers || r.Latency.N != r.Delivered {
			t.Errorf("round %+v: want every event delivered to each subscriber", r)
		}
	}
	if _, err := RunPubSub(context.Background(), PubSubOptions{Subscribers: []int{10, 1}}); err == nil {
		t.Error("decreasing subscriber counts accepted")
	}
}
