package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/registrar"
	"github.com/rmb-go/rmb/pkg/relay"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// rmb sub and rmb pub against two peers (in this process, with a real
// registrar, relay and redis-server): an event published on one shows on
// the other's rmb sub.
func TestPubSub(t *testing.T) {
	rs := redistest.Start(t, nil)
	reg := httptest.NewServer(registrar.NewServer(&registrar.Options{}).Handler())
	t.Cleanup(reg.Close)
	client := func() *registrar.Client { return registrar.NewClient(reg.URL, nil) }
	srv := httptest.NewUnstartedServer(nil)
	domain := srv.Listener.Addr().String()
	r, err := relay.New(&relay.Options{Domains: []string{domain}, Directory: client()})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = r.Handler()
	srv.Start()
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	startPeer := func(db int) *peer.Peer {
		seed := make([]byte, 32)
		rand.Read(seed)
		id, err := identity.FromSeed(seed, identity.Ed25519)
		if err != nil {
			t.Fatal(err)
		}
		rdb := redis.NewClient(&redis.Options{Addr: rs.Addr, DB: db})
		t.Cleanup(func() { rdb.Close() })
		p, err := peer.New(&peer.Options{Identity: id, Relays: []string{"ws://" + domain}, Registrar: client(), Redis: rdb})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { p.Run(ctx); close(done) }()
		t.Cleanup(func() { p.Close(); <-done })
		<-p.Ready()
		return p
	}
	owner, subscriber := startPeer(1), startPeer(2)
	ownerRedis := fmt.Sprintf("redis://%s/1", rs.Addr)
	subRedis := fmt.Sprintf("redis://%s/2", rs.Addr)

	var out syncBuffer
	sub := exec.CommandContext(ctx, rmbBin, "sub", "--twin", itoa(owner.Twin()), "--topic", "alerts/#", "--count", "1", "--redis", subRedis)
	sub.Stdout, sub.Stderr = &out, &out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(owner.Leases()) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no lease at the owner after 30s; rmb sub said: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	res := rmb(t, nil, "pub", "--topic", "alerts/disk", "--data", "97% full", "--redis", ownerRedis)
	if res.code != 0 || !strings.Contains(res.stdout, "1 subscribers, 1 sent") {
		t.Fatalf("rmb pub: %+v", res)
	}
	if err := sub.Wait(); err != nil {
		t.Fatalf("rmb sub: %v: %s", err, out.String())
	}
	if !strings.Contains(out.String(), "alerts/disk (encrypted): 97% full") {
		t.Errorf("rmb sub printed %q", out.String())
	}
	// It unsubscribed on exit.
	deadline = time.Now().Add(30 * time.Second)
	for len(owner.Leases()) != 0 || len(subscriber.Subscriptions()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("still subscribed after rmb sub exited: %v %v", owner.Leases(), subscriber.Subscriptions())
		}
		time.Sleep(20 * time.Millisecond)
	}
	res = rmb(t, nil, "pub", "--topic", "alerts/disk", "--data", "x", "--public", "--confirm", "--json", "--redis", ownerRedis)
	if res.code != 0 || !strings.Contains(res.stdout, `"subscribers":0`) {
		t.Errorf("rmb pub with no subscriber: %+v", res)
	}

	// Bad input.
	for _, args := range [][]string{
		{"pub", "--topic", "alerts/+", "--data", "x"},
		{"pub", "--data", "x"},
		{"pub", "--topic", "a", "--ttl", "0"},
		{"sub", "--topic", "a"},
		{"sub", "--twin", "5", "--topic", "a/#/b"},
		{"sub", "--twin", "5", "--topic", "a", "--count", "-1"},
	} {
		if r := rmb(t, nil, append(args, "--redis", ownerRedis)...); r.code != 2 {
			t.Errorf("rmb %v: %+v, want exit code 2", args, r)
		}
	}
	r2 := rmb(t, nil, "sub", "--twin", itoa(owner.Twin()), "--topic", "a", "--level", "twice", "--redis", subRedis)
	if r2.code != 1 || !strings.Contains(r2.stderr, "level") {
		t.Errorf("rmb sub --level twice: %+v", r2)
	}
}
