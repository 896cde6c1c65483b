package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/registrar"
	"github.com/rmb-go/rmb/pkg/relay"
)

// PubSubOptions configure RunPubSub.
type PubSubOptions struct {
	// Subscribers are the rounds: the number of subscriber twins of each.
	// Default 1, 100, 1000.
	Subscribers []int
	// Duration of the publishing of each round. Default 5s.
	Duration time.Duration
	// Publishers publish concurrently. Default 4.
	Publishers int
	// PayloadSize of each event, at least 8 bytes. Default 256.
	PayloadSize int
	// Public sends events in plain text instead of encrypted per
	// subscriber.
	Public bool
	// Progress, if set, receives a status line per second.
	Progress io.Writer
}

// PubSubRound is one round of RunPubSub.
type PubSubRound struct {
	Subscribers int
	Events      int // published
	Delivered   int // events received by subscribers, all told
	Lost        int // expected and not received within 30s of the end
	Elapsed     time.Duration
	EventsPerS  float64 // published events per second (each to every subscriber)
	DeliveriesS float64 // deliveries per second
	Latency     Latency // from the start of Publish to the subscriber's channel
}

// RunPubSub measures topic events delivered by one publishing peer to
// many subscriber twins, all peers in this process (subscribers speak to
// the relay each over their own connection), with an in-process relay
// and registrar. Each round publishes for Duration and then waits for
// the deliveries.
func RunPubSub(ctx context.Context, o PubSubOptions) ([]PubSubRound, error) {
	if len(o.Subscribers) == 0 {
		o.Subscribers = []int{1, 100, 1000}
	}
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if o.Publishers <= 0 {
		o.Publishers = 4
	}
	if o.PayloadSize < 8 {
		o.PayloadSize = 256
	}
	if !slices.IsSorted(o.Subscribers) || o.Subscribers[0] < 1 {
		return nil, errors.New("bench pubsub: subscriber counts must be 1 or more, in increasing order")
	}
	// Every subscriber connects from 127.0.0.1.
	RaiseFileLimit(uint64(4*o.Subscribers[len(o.Subscribers)-1] + 1024))
	st, err := startStack(relay.Options{MaxSessionsPerAddress: o.Subscribers[len(o.Subscribers)-1] + 16})
	if err != nil {
		return nil, err
	}
	defer st.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var pwg sync.WaitGroup
	defer pwg.Wait()
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	// The subscribers share the registrar client without its change feed:
	// a thousand feeds, each woken by every new twin, would cost more
	// than the events measured.
	shared := noWatch{st.reg}
	newPeer := func(name string, workers int) (*peer.Peer, error) {
		seed := make([]byte, 32)
		copy(seed, name)
		id, err := identity.FromSeed(seed, identity.Ed25519)
		if err != nil {
			return nil, err
		}
		p, err := peer.New(&peer.Options{Identity: id, Relays: []string{"ws://" + st.domain}, Registrar: shared,
			Logger: quiet, Workers: workers})
		if err != nil {
			return nil, err
		}
		pwg.Go(func() { p.Run(ctx) })
		select {
		case <-p.Ready():
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(60 * time.Second):
			return nil, errors.New("bench peer did not become ready in 60s")
		}
		deadline := time.Now().Add(60 * time.Second)
		for p.Connected() == 0 {
			if time.Now().After(deadline) {
				return nil, errors.New("bench peer not connected to the relay in 60s")
			}
			time.Sleep(10 * time.Millisecond)
		}
		return p, nil
	}
	pub, err := newPeer("rmb-bench-pubsub-publisher", 0)
	if err != nil {
		return nil, err
	}
	// Latencies, and deliveries counted, by every subscriber.
	var (
		latMu     sync.Mutex
		lats      []time.Duration
		delivered atomic.Int64
	)
	var subs []*peer.Peer
	addSubscriber := func(i int) error {
		p, err := newPeer(fmt.Sprintf("rmb-bench-pubsub-sub-%d", i), 4)
		if err != nil {
			return err
		}
		s, err := p.Subscribe(ctx, pub.Twin(), "bench/#", &peer.SubscribeOptions{Lease: time.Hour})
		if err != nil {
			return fmt.Errorf("subscribe: %w", err)
		}
		latMu.Lock()
		subs = append(subs, p)
		latMu.Unlock()
		pwg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case ev := <-s.Events():
					sent := int64(binary.BigEndian.Uint64(ev.Data))
					d := time.Duration(time.Now().UnixNano() - sent)
					latMu.Lock()
					lats = append(lats, d)
					latMu.Unlock()
					delivered.Add(1)
				}
			}
		})
		return nil
	}
	var out []PubSubRound
	for _, n := range o.Subscribers {
		// Add subscribers, 16 at a time.
		var (
			wg    sync.WaitGroup
			errMu sync.Mutex
			first error
		)
		sem := make(chan struct{}, 16)
		for i := len(subs); i < n; i++ {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := addSubscriber(i); err != nil {
					errMu.Lock()
					first = cmp(first, err)
					errMu.Unlock()
				}
			})
		}
		wg.Wait()
		if first != nil {
			return out, first
		}
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "round: %d subscribers\n", n)
		}
		latMu.Lock()
		lats = lats[:0]
		latMu.Unlock()
		delivered.Store(0)
		var published atomic.Int64
		start := time.Now()
		end := start.Add(o.Duration)
		var pubErr atomic.Value
		for range o.Publishers {
			wg.Go(func() {
				payload := make([]byte, o.PayloadSize)
				for time.Now().Before(end) && ctx.Err() == nil {
					binary.BigEndian.PutUint64(payload, uint64(time.Now().UnixNano()))
					res, err := pub.Publish(ctx, "bench/events", payload, &peer.PublishOptions{Public: o.Public})
					if err != nil {
						pubErr.Store(err)
						return
					}
					if res.Subscribers != n {
						pubErr.Store(fmt.Errorf("event went to %d subscribers, want %d", res.Subscribers, n))
						return
					}
					published.Add(1)
				}
			})
		}
		wg.Wait()
		if err, _ := pubErr.Load().(error); err != nil {
			return out, err
		}
		want := published.Load() * int64(n)
		wait := time.Now().Add(30 * time.Second)
		for delivered.Load() < want && time.Now().Before(wait) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		elapsed := time.Since(start)
		latMu.Lock()
		r := PubSubRound{Subscribers: n, Events: int(published.Load()), Delivered: int(delivered.Load()),
			Lost: int(want - delivered.Load()), Elapsed: elapsed, Latency: summarize(slices.Clone(lats))}
		latMu.Unlock()
		r.EventsPerS = float64(r.Events) / elapsed.Seconds()
		r.DeliveriesS = float64(r.Delivered) / elapsed.Seconds()
		out = append(out, r)
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "%5d subscribers: %6d events, %8.0f events/s, %8.0f deliveries/s, lost %d, %s\n",
				n, r.Events, r.EventsPerS, r.DeliveriesS, r.Lost, r.Latency)
		}
	}
	return out, nil
}

func cmp(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// noWatch is a registrar client without its Watch method, so that peers
// sharing it do not each run its change feed.
type noWatch struct{ c *registrar.Client }

func (n noWatch) Twin(ctx context.Context, id uint32) (*registrar.Twin, error) {
	return n.c.Twin(ctx, id)
}
func (n noWatch) TwinByPublicKey(ctx context.Context, pub []byte) (*registrar.Twin, error) {
	return n.c.TwinByPublicKey(ctx, pub)
}
func (n noWatch) Register(ctx context.Context, id *identity.Identity, relays []string) (*registrar.Twin, error) {
	return n.c.Register(ctx, id, relays)
}
func (n noWatch) Update(ctx context.Context, id *identity.Identity, twin uint32, relays []string, e2eKey []byte) (*registrar.Twin, error) {
	return n.c.Update(ctx, id, twin, relays, e2eKey)
}
func (n noWatch) CachedTwin(id uint32) (*registrar.Twin, error) { return n.c.CachedTwin(id) }
