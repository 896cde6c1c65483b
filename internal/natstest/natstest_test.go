package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// A message published on one node reaches a subscriber on another: the
// routes work.
func TestClusterRoutes(t *testing.T) {
	c := StartCluster(t, 3)
	a, err := nats.Connect(c.Nodes[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := nats.Connect(c.Nodes[2].URL)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sub, err := a.Subscribe("echo", func(m *nats.Msg) { m.Respond(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	a.Flush()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := b.Request("echo", []byte("hi"), 2*time.Second)
		if err == nil {
			if string(m.Data) != "hi" {
				t.Fatalf("reply %q", m.Data)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reply across the cluster: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
