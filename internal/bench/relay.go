package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rmb-go/rmb/internal/procs"
	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/relay"
)

// RelayOptions configure a relay run. Zero values mean defaults.
type RelayOptions struct {
	// Pairs is the number of sender and of receiver connections. Default 16.
	Pairs int
	// Messages is how many envelopes each sender sends. Default 20000.
	Messages int
	// PayloadSize in bytes. Default 256.
	PayloadSize int
	// Rate is the total send rate in envelopes/s; 0 sends as fast as the
	// connections take them.
	Rate int
	// Window bounds the envelopes of one sender that are sent but not yet
	// received, as a client waiting for answers would; 0 means 1000, a
	// negative value means no bound (then a receiver slower than its
	// sender fills its relay queues until they drop).
	Window int
	// Drain is how long to wait after the last send for stragglers.
	// Default 5s.
	Drain time.Duration
	// Progress receives a status line every second; nil for none.
	Progress io.Writer
	// CoderClients makes the load clients use coder/websocket (one write
	// syscall per envelope, as most clients do) instead of wsframe, whose
	// senders coalesce writes.
	CoderClients bool
	// SendPhase, if set, is called when the send phase starts (after the
	// envelopes are signed and the connections are up), and the function
	// it returns when the phase ends (after the drain): profile the relay
	// and nothing else.
	SendPhase func() (end func())
	// Instances, above 1, runs that many in-process relay instances of
	// one cluster instead of one relay: each on its own node of a real
	// NATS cluster (nats-server processes), all on one redis-server.
	Instances int
	// Placement puts each pair's ends on the instances; default Mixed
	// (half the pairs on one instance, half across two).
	Placement Placement
}

// ClassResult is what the pairs of one placement class measured.
type ClassResult struct {
	Pairs     int
	Delivered int64
	Elapsed   time.Duration // first send to the class's last delivery
	PerSecond float64
	Latency   Latency
}

// RelayResult is what a relay run measured.
type RelayResult struct {
	Pairs, PayloadSize, Window int
	Sent, Delivered            int64
	Lost, Duplicates           int64
	Elapsed                    time.Duration     // first send to last delivery
	PerSecond                  float64           // delivered / Elapsed
	Latency                    Latency           // send to receive
	RelayRouted                map[string]uint64 // the relay's own counts: local, stored, federated
	RelayDrops                 map[string]uint64 // the relay's drops by reason, zero counts left out
	// Instances of the cluster (1: a single relay). Same and Cross are
	// the pairs on one instance and those across two.
	Instances   int
	Placement   Placement    `json:",omitempty"`
	Same, Cross *ClassResult `json:",omitempty"`
	// CPUPerEnvelope is the CPU of this process (load clients and
	// relays) and of its child processes (nats-server, redis-server)
	// in the send phase, per delivered envelope.
	CPUPerEnvelope time.Duration
	// NATSBytesPerSession is how much the nats-server processes' resident
	// memory grew per session connected (cluster runs).
	NATSBytesPerSession int64 `json:",omitempty"`
	// NATS is plain request/reply between two of the cluster's nodes,
	// one requester per cross-instance pair, measured after the run.
	NATS *NATSResult `json:",omitempty"`
}

// ClusterSummary describes the classes of a cluster run, one line each
// ("" for a single relay).
func (r *RelayResult) ClusterSummary() string {
	if r.Instances < 2 {
		return ""
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "  instances       %d (%s placement), CPU %s per envelope, nats-server %d B per session\n", r.Instances, r.Placement, r.CPUPerEnvelope.Round(100*time.Nanosecond), r.NATSBytesPerSession)
	for _, c := range []struct {
		name string
		r    *ClassResult
	}{{"same-instance", r.Same}, {"cross-instance", r.Cross}} {
		if c.r != nil && c.r.Pairs > 0 {
			fmt.Fprintf(&sb, "  %-15s %d pairs: %d delivered, %.0f envelopes/s; latency %s\n", c.name, c.r.Pairs, c.r.Delivered, c.r.PerSecond, c.r.Latency)
		}
	}
	if r.NATS != nil {
		fmt.Fprintf(&sb, "  plain NATS      %d requesters, node to node: %.0f requests/s; latency %s\n", r.NATS.Requesters, r.NATS.PerSecond, r.NATS.Latency)
	}
	return sb.String()
}

func (r *RelayResult) String() string {
	return fmt.Sprintf("pairs %d, payload %d B: sent %d, delivered %d, lost %d, duplicates %d in %s = %.0f envelopes/s; latency %s",
		r.Pairs, r.PayloadSize, r.Sent, r.Delivered, r.Lost, r.Duplicates, r.Elapsed.Round(time.Millisecond), r.PerSecond, r.Latency)
}

// RunRelay starts an in-process registrar and relay on 127.0.0.1, registers
// 2*Pairs twins, and measures forwarding between them.
func RunRelay(ctx context.Context, o RelayOptions) (*RelayResult, error) {
	if o.Pairs <= 0 {
		o.Pairs = 16
	}
	if o.Messages <= 0 {
		o.Messages = 20000
	}
	if o.PayloadSize <= 0 {
		o.PayloadSize = 256
	}
	if o.Drain <= 0 {
		o.Drain = 5 * time.Second
	}
	if o.Window == 0 {
		o.Window = 1000
	}

	if o.Placement == "" {
		o.Placement = Mixed
	}
	if o.Placement != Mixed && o.Placement != Same && o.Placement != Cross {
		return nil, fmt.Errorf("placement %q: want mixed, same or cross", o.Placement)
	}
	var tg *relayTarget
	var err error
	if o.Instances > 1 {
		tg, err = startCluster(o.Instances, relay.Options{SendQueueSize: 4096})
	} else {
		o.Instances = 1
		tg, err = startSingle(relay.Options{SendQueueSize: 4096})
	}
	if err != nil {
		return nil, err
	}
	defer tg.close()
	reg, domain := tg.reg, tg.domain
	// Pair s: sender twin s on instance sendAt[s], receiver twin Pairs+s
	// on recvAt[s].
	sendAt, recvAt, cross := make([]int, o.Pairs), make([]int, o.Pairs), make([]bool, o.Pairs)
	for s := range o.Pairs {
		sendAt[s], recvAt[s], cross[s] = o.Placement.instancesOf(s, o.Instances)
	}
	natsBefore := int64(0)
	if o.Instances > 1 {
		_, natsBefore = children("nats-server")
	}

	// Identities: ed25519, as the fastest to sign.
	n := 2 * o.Pairs
	ids := make([]*identity.Identity, n)
	twins := make([]uint32, n)
	for i := range ids {
		seed := make([]byte, 32)
		copy(seed, fmt.Sprintf("rmb-bench-%d", i))
		if ids[i], err = identity.FromSeed(seed, identity.Ed25519); err != nil {
			return nil, err
		}
		t, err := reg.Register(ctx, ids[i], []string{domain})
		if err != nil {
			return nil, fmt.Errorf("register bench twin: %w", err)
		}
		twins[i] = t.ID
	}

	// Build and sign every envelope up front, in parallel.
	payload := make([]byte, o.PayloadSize)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	frames := make([][][]byte, o.Pairs)
	var wg sync.WaitGroup
	work := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for s := range work {
				frames[s] = make([][]byte, o.Messages)
				for q := range o.Messages {
					e := envelope.NewRequest(strconv.Itoa(s)+"-"+strconv.Itoa(q), "bench", payload, 600)
					e.Source = envelope.NewAddress(twins[s], "")
					e.Destination = envelope.NewAddress(twins[o.Pairs+s], "")
					e.Stamp(time.Now())
					e.Sign(ids[s])
					frames[s][q], _ = envelope.Marshal(e)
				}
			}
		})
	}
	for s := range o.Pairs {
		work <- s
	}
	close(work)
	wg.Wait()

	dial := func(i, instance int) (client, error) {
		tok, err := identity.NewToken(ids[i], twins[i], "", time.Now(), 10*time.Minute)
		if err != nil {
			return nil, err
		}
		c, err := dialClient(ctx, "ws://"+tg.addrs[instance]+"/?"+tok, o.PayloadSize+4096, o.CoderClients)
		if err != nil {
			return nil, fmt.Errorf("dial relay as twin %d: %w", twins[i], err)
		}
		return c, nil
	}

	sentAt := make([][]atomic.Int64, o.Pairs)
	got := make([][]atomic.Bool, o.Pairs)
	for s := range o.Pairs {
		sentAt[s] = make([]atomic.Int64, o.Messages)
		got[s] = make([]atomic.Bool, o.Messages)
	}
	var sent, delivered, dups atomic.Int64
	pairDelivered := make([]atomic.Int64, o.Pairs) // by sender
	var lastDelivery atomic.Int64
	var lastByClass [2]atomic.Int64 // same, cross
	lat := make([][]time.Duration, o.Pairs)

	// Receivers first, so nothing is stored for an offline twin.
	recvCtx, stopRecv := context.WithCancel(ctx)
	defer stopRecv()
	var rwg sync.WaitGroup
	receivers := make([]client, o.Pairs)
	for r := range o.Pairs {
		c, err := dial(o.Pairs+r, recvAt[r])
		if err != nil {
			return nil, err
		}
		defer c.CloseNow()
		receivers[r] = c
		lat[r] = make([]time.Duration, 0, o.Messages)
		rwg.Go(func() {
			var rt envelope.Routing
			var buf []byte
			for {
				b, err := c.Read(recvCtx, buf)
				if err != nil {
					return
				}
				buf = b
				now := time.Now().UnixNano()
				if envelope.ReadRouting(b, &rt) != nil || rt.Kind != envelope.KindRequest {
					continue
				}
				s, q, ok := parseUID(rt.UID)
				if !ok || s >= o.Pairs || q >= o.Messages {
					continue
				}
				if got[s][q].Swap(true) {
					dups.Add(1)
					continue
				}
				delivered.Add(1)
				pairDelivered[s].Add(1)
				lastDelivery.Store(now)
				if cross[s] {
					lastByClass[1].Store(now)
				} else {
					lastByClass[0].Store(now)
				}
				lat[r] = append(lat[r], time.Duration(now-sentAt[s][q].Load()))
			}
		})
	}
	senders := make([]client, o.Pairs)
	for s := range o.Pairs {
		if senders[s], err = dial(s, sendAt[s]); err != nil {
			return nil, err
		}
		defer senders[s].CloseNow()
	}
	// Let the relay register every session before the clock starts (and
	// a cluster's subscriptions spread over the NATS routes).
	settle := 200 * time.Millisecond
	var natsGrowth int64
	if o.Instances > 1 {
		settle = 2 * time.Second
	}
	time.Sleep(settle)
	if o.Instances > 1 {
		_, after := children("nats-server")
		natsGrowth = after - natsBefore
	}
	childCPU, _ := children("")
	cpu0 := procs.CPUTime() + childCPU

	endPhase := func() {}
	if o.SendPhase != nil {
		endPhase = o.SendPhase()
	}
	stop := make(chan struct{})
	total := int64(o.Pairs * o.Messages)
	start := time.Now()
	go progress(o.Progress, stop, func(el time.Duration) string {
		d := delivered.Load()
		return fmt.Sprintf("[%s] sent %d/%d  delivered %d  %.0f/s", el, sent.Load(), total, d, float64(d)/time.Since(start).Seconds())
	})
	var perSender time.Duration // pause between sends of one sender
	if o.Rate > 0 {
		perSender = time.Duration(float64(time.Second) * float64(o.Pairs) / float64(o.Rate))
	}
	var swg sync.WaitGroup
	var sendErr atomic.Pointer[error]
	for s := range o.Pairs {
		swg.Go(func() {
			c := senders[s]
			fail := func(err error) { sendErr.CompareAndSwap(nil, &err) }
			next := time.Now()
			for q, f := range frames[s] {
				// Before waiting, send what is buffered.
				if perSender > 0 {
					next = next.Add(perSender)
					if d := time.Until(next); d > 0 {
						if err := c.Flush(); err != nil {
							fail(err)
							return
						}
						time.Sleep(d)
					}
				}
				for o.Window > 0 && int64(q)-pairDelivered[s].Load() >= int64(o.Window) {
					if err := c.Flush(); err != nil {
						fail(err)
						return
					}
					if ctx.Err() != nil {
						return
					}
					time.Sleep(50 * time.Microsecond)
				}
				sentAt[s][q].Store(time.Now().UnixNano())
				if err := c.Write(ctx, f); err != nil {
					fail(err)
					return
				}
				sent.Add(1)
			}
			if err := c.Flush(); err != nil {
				fail(err)
			}
		})
	}
	swg.Wait()
	// Drain: until everything arrived, or no progress for o.Drain.
	last, lastChange := delivered.Load(), time.Now()
	for delivered.Load() < sent.Load() && time.Since(lastChange) < o.Drain && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
		if d := delivered.Load(); d != last {
			last, lastChange = d, time.Now()
		}
	}
	endPhase()
	childCPU, _ = children("")
	cpuUsed := procs.CPUTime() + childCPU - cpu0
	close(stop)
	stopRecv()
	for _, c := range senders {
		c.CloseNow()
	}
	for _, c := range receivers { // wsframe reads take no context
		c.CloseNow()
	}
	rwg.Wait()
	if p := sendErr.Load(); p != nil && !errors.Is(*p, context.Canceled) {
		return nil, fmt.Errorf("send: %w", *p)
	}

	res := &RelayResult{Pairs: o.Pairs, PayloadSize: o.PayloadSize, Window: o.Window, Sent: sent.Load(), Delivered: delivered.Load(), Duplicates: dups.Load()}
	res.Lost = res.Sent - res.Delivered
	if end := lastDelivery.Load(); end > 0 {
		res.Elapsed = time.Unix(0, end).Sub(start)
		res.PerSecond = float64(res.Delivered) / res.Elapsed.Seconds()
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	res.Latency = summarize(all)
	routed, dropped := tg.stats()
	res.RelayRouted, res.RelayDrops = routed, nonZero(dropped)
	res.Instances = o.Instances
	if res.Delivered > 0 {
		res.CPUPerEnvelope = cpuUsed / time.Duration(res.Delivered)
	}
	if o.Instances > 1 {
		res.Placement = o.Placement
		res.NATSBytesPerSession = natsGrowth / int64(2*o.Pairs)
		res.Same, res.Cross = &ClassResult{}, &ClassResult{}
		var lats [2][]time.Duration
		for s := range o.Pairs {
			c, k := res.Same, 0
			if cross[s] {
				c, k = res.Cross, 1
			}
			c.Pairs++
			c.Delivered += pairDelivered[s].Load()
			lats[k] = append(lats[k], lat[s]...)
		}
		if res.Cross.Pairs > 0 {
			if res.NATS, err = natsRequestReply(ctx, tg.nats[0], tg.nats[1], res.Cross.Pairs, o.PayloadSize+200, 3*time.Second); err != nil {
				return nil, fmt.Errorf("plain NATS request/reply: %w", err)
			}
		}
		for k, c := range []*ClassResult{res.Same, res.Cross} {
			c.Latency = summarize(lats[k])
			if end := lastByClass[k].Load(); end > 0 {
				c.Elapsed = time.Unix(0, end).Sub(start)
				c.PerSecond = float64(c.Delivered) / c.Elapsed.Seconds()
			}
		}
	}
	return res, nil
}

func parseUID(b []byte) (sender, seq int, ok bool) {
	s, q, found := strings.Cut(string(b), "-")
	if !found {
		return 0, 0, false
	}
	a, err1 := strconv.Atoi(s)
	c, err2 := strconv.Atoi(q)
	return a, c, err1 == nil && err2 == nil
}

func nonZero(m map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range m {
		if v > 0 {
			out[k] = v
		}
	}
	return out
}
