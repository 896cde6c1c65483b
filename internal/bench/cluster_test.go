package bench

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A cluster run (three instances on a real three-node NATS cluster and a
// redis-server) delivers every envelope once, and splits the figures:
// pair 0 on one instance, pair 1 across two.
func TestRunRelayCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const msgs = 300
	res, err := RunRelay(ctx, RelayOptions{Instances: 3, Pairs: 2, Messages: msgs, Drain: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s\n%s", res, res.ClusterSummary())
	if res.Lost != 0 || res.Duplicates != 0 || res.Delivered != 2*msgs {
		t.Fatalf("%s", res)
	}
	if res.Instances != 3 || res.Same == nil || res.Cross == nil ||
		res.Same.Pairs != 1 || res.Cross.Pairs != 1 || res.Same.Delivered != msgs || res.Cross.Delivered != msgs ||
		res.Same.Latency.N != msgs || res.Cross.Latency.N != msgs || res.Cross.PerSecond <= 0 {
		t.Fatalf("classes: same %+v, cross %+v", res.Same, res.Cross)
	}
	// The instances' own counts: the cross pair's envelopes went over NATS.
	if res.RelayRouted["cluster"] < msgs || res.RelayRouted["local"] < msgs {
		t.Fatalf("relay routed %v, want at least %d local and %d to another instance", res.RelayRouted, msgs, msgs)
	}
	if res.NATS == nil || res.NATS.Requesters != 1 || res.NATS.PerSecond <= 0 {
		t.Fatalf("plain NATS: %+v", res.NATS)
	}
	if res.CPUPerEnvelope <= 0 || !strings.Contains(res.ClusterSummary(), "cross-instance") {
		t.Fatalf("cpu %s, summary %q", res.CPUPerEnvelope, res.ClusterSummary())
	}
}

func TestRunRelayBadPlacement(t *testing.T) {
	_, err := RunRelay(context.Background(), RelayOptions{Instances: 3, Placement: "diagonal"})
	if err == nil || !strings.Contains(err.Error(), `placement "diagonal"`) {
		t.Fatalf("err %v", err)
	}
}

func TestPlacement(t *testing.T) {
	for _, c := range []struct {
		p          Placement
		s, n       int
		send, recv int
		cross      bool
	}{
		{Mixed, 0, 3, 0, 0, false}, {Mixed, 1, 3, 1, 2, true}, {Mixed, 5, 3, 2, 0, true},
		{Same, 1, 3, 1, 1, false}, {Cross, 2, 3, 2, 0, true}, {Cross, 1, 1, 0, 0, false},
	} {
		send, recv, cross := c.p.instancesOf(c.s, c.n)
		if send != c.send || recv != c.recv || cross != c.cross {
			t.Errorf("%s pair %d of %d: %d -> %d cross %v", c.p, c.s, c.n, send, recv, cross)
		}
	}
}
