package peer_test

import (
	"context"

	"bytes"
	"fmt"
	"github.com/redis/go-redis/v9"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/relay"
)

// syncBuffer is a log sink two goroutines may write.
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

func bufferLogger(w *syncBuffer) peerOption {
	return func(o *peer.Options) {
		o.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
}

// Two peers with one key take the session from each other at the relay;
// each says why at ERROR, naming the other's address, instead of
// reconnecting quietly for ever.
func TestSameKeyTwice(t *testing.T) {
	s := newStack(t, 1)
	var logA, logB syncBuffer
	a := s.newPeer(bufferLogger(&logA))
	s.startPeer(a.id, int(s.nextDB.Add(1)), bufferLogger(&logB))
	waitFor(t, 20*time.Second, func() error {
		for _, l := range []string{logA.String(), logB.String()} {
			if strings.Contains(l, "level=ERROR") && strings.Contains(l, "two peers run with the same key") &&
				strings.Contains(l, "replaced by another connection of this twin and session from 127.0.0.1") {
				return nil
			}
		}
		return fmt.Errorf("no clear error yet:\nA: %s\nB: %s", logA.String(), logB.String())
	})
}

// A twin the relay's allow list refuses says so at ERROR once, not at WARN
// on every retry.
func TestAllowListRefusal(t *testing.T) {
	s := newStack(t, 0)
	nobody, err := relay.ParseAllowList([]byte("- 999999\n"))
	if err != nil {
		t.Fatal(err)
	}
	tr := s.startRelay(func(o *relay.Options) { o.Policy = &relay.Policy{Allow: nobody} })
	var logs syncBuffer
	id := newIdentity(t)
	rdb := redis.NewClient(&redis.Options{Addr: s.redis.Addr, DB: int(s.nextDB.Add(1))})
	defer rdb.Close()
	o := peer.Options{
		Identity: id, Relays: []string{tr.url}, Registrar: s.client(), Redis: rdb,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	p, err := peer.New(&o)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); p.Close(); <-done }()
	waitFor(t, 20*time.Second, func() error {
		if n := strings.Count(logs.String(), "HTTP 403"); n < 3 {
			return fmt.Errorf("%d refusals so far:\n%.3000s", n, logs.String())
		}
		return nil
	})
	l := logs.String()
	if n := strings.Count(l, "level=ERROR msg=\"the relay refuses this twin (HTTP 403"); n != 1 {
		t.Errorf("%d ERROR lines about the allow list, want 1:\n%s", n, l)
	}
	if strings.Contains(l, "level=WARN msg=\"relay connection failed\"") {
		t.Errorf("refusals logged as WARN:\n%s", l)
	}
}
