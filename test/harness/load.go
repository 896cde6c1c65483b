package harness

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/redisapi"
)

// Bot is a client program of a peer: it pushes requests with unique ids
// on msgbus.system.local with go-redis and collects the responses from its
// own ret queue. The id is the request's ref and its payload.
type Bot struct {
	RDB *redis.Client
	Ret string       // its reply queue
	Cmd string       // command to call
	TTL int64        // exp of each request, seconds
	Now func() int64 // the "now" field; default time.Now().Unix()
	log func(string, ...any)

	mu        sync.Mutex     // guards the following
	accepted  map[string]int // id -> destinations
	order     []string
	responses map[string][]redisapi.IncomingResponse
	rejected  int            // pushes Redis did not acknowledge
	strays    int            // responses for ids never accepted
	skip      map[string]int // processing-list entries already recorded
}

// NewBot returns a bot pushing cmd to peer's Redis rdb.
func NewBot(rdb *redis.Client, name, cmd string, ttl int64) *Bot {
	return &Bot{RDB: rdb, Ret: "bot.ret." + name, Cmd: cmd, TTL: ttl,
		accepted: map[string]int{}, responses: map[string][]redisapi.IncomingResponse{}}
}

// Push sends one request with id to dst. It is accepted only when Redis
// acknowledged the push; an unacknowledged push is not retried (it may or
// may not have happened) and counts as rejected.
func (b *Bot) Push(ctx context.Context, id string, dst []uint32) error {
	return b.PushRaw(ctx, id, len(dst), b.Request(id, dst, []byte(id)))
}

// Request is the JSON of a request with id and payload.
func (b *Bot) Request(id string, dst []uint32, payload []byte) []byte {
	now := time.Now().Unix()
	if b.Now != nil {
		now = b.Now()
	}
	j, _ := json.Marshal(redisapi.OutgoingRequest{
		Version: 1, Ref: id, Command: b.Cmd, Expiration: b.TTL,
		Data: base64.StdEncoding.EncodeToString(payload), Destinations: dst,
		ReplyTo: b.Ret, Schema: "application/json", Now: now,
	})
	return j
}

// PushRaw pushes body as the request id that expects want responses.
// The id is recorded before the push (its answer may come back before
// LPUSH returns) and forgotten again when Redis did not acknowledge it.
func (b *Bot) PushRaw(ctx context.Context, id string, want int, body []byte) error {
	b.mu.Lock()
	_, dup := b.accepted[id]
	b.accepted[id] = want
	b.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := b.RDB.LPush(pctx, redisapi.QueueLocal, body).Err(); err != nil {
		b.mu.Lock()
		b.rejected++
		if !dup {
			delete(b.accepted, id)
			delete(b.responses, id)
		}
		b.mu.Unlock()
		return err
	}
	if !dup {
		b.mu.Lock()
		b.order = append(b.order, id)
		b.mu.Unlock()
	}
	return nil
}

// Collect pops responses from Ret until ctx ends, riding out Redis
// outages. It pops the way a bot that must lose nothing would: BLMOVE to
// its own processing list, record, LREM. After a failed round trip it
// first takes what that list holds: a response whose pop Redis executed
// (and persisted) while the reply died with it would otherwise vanish in
// the bot, and be counted as lost by the bus.
func (b *Bot) Collect(ctx context.Context) {
	processing := b.Ret + ".processing"
	rescan := false
	for ctx.Err() == nil {
		if rescan {
			left, err := b.RDB.LRange(ctx, processing, 0, -1).Result()
			if err != nil {
				b.pause(ctx)
				continue
			}
			rescan = false
			for _, raw := range left {
				b.record(raw)
				if b.RDB.LRem(ctx, processing, 1, raw).Err() != nil {
					b.forgetOnce(raw)
					rescan = true
					break
				}
			}
		}
		raw, err := b.RDB.BLMove(ctx, b.Ret, processing, "RIGHT", "LEFT", time.Second).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			rescan = true
			b.pause(ctx)
			continue
		}
		b.record(raw)
		if b.RDB.LRem(ctx, processing, 1, raw).Err() != nil {
			// Recorded already: the rescan removes it without counting
			// it again.
			b.forgetOnce(raw)
			rescan = true
		}
	}
}

func (b *Bot) pause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(100 * time.Millisecond):
	}
}

// record counts one response.
func (b *Bot) record(raw string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.skip[raw] > 0 {
		b.skip[raw]--
		return
	}
	var r redisapi.IncomingResponse
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return
	}
	if _, ok := b.accepted[r.Ref]; ok {
		b.responses[r.Ref] = append(b.responses[r.Ref], r)
	} else {
		b.strays++
	}
}

// forgetOnce makes the next record of raw (from the processing list)
// count nothing: it was recorded when popped.
func (b *Bot) forgetOnce(raw string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.skip == nil {
		b.skip = map[string]int{}
	}
	b.skip[raw]++
}

// Pending is how many accepted requests still miss responses.
func (b *Bot) Pending() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for id, want := range b.accepted {
		if len(b.responses[id]) < want {
			n++
		}
	}
	return n
}

// Accepted is how many requests Redis acknowledged.
func (b *Bot) Accepted() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.accepted)
}

// WaitDone waits until every accepted request has its responses, or
// timeout.
func (b *Bot) WaitDone(ctx context.Context, timeout time.Duration) error {
	return WaitFor(ctx, timeout, func() error {
		if n := b.Pending(); n > 0 {
			return fmt.Errorf("%d requests still without a response", n)
		}
		return nil
	})
}

// Load pushes n requests to dst, one every interval, with ids
// "<prefix>-<i>", until done or ctx ends. onPush, if set, runs after push
// i (to inject a fault at the right moment).
func (b *Bot) Load(ctx context.Context, prefix string, n int, interval time.Duration, dst []uint32, onPush func(i int)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for i := range n {
		b.Push(ctx, fmt.Sprintf("%s-%d", prefix, i), dst)
		if onPush != nil {
			onPush(i)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Echo is a service program behind a peer: it pops msgbus.<cmd> and
// answers each request with its own payload on msgbus.system.reply,
// counting how many times it saw each request id (the payload). Payload
// "fail" is answered with error 400 instead. Pushes of answers are
// retried until they succeed, as a careful service would.
type Echo struct {
	RDB     *redis.Client
	Cmd     string
	Workers int           // concurrent requests; default 1
	Delay   time.Duration // how long each request takes

	served atomic.Int64
	mu     sync.Mutex
	seen   map[string]int
}

// NewEcho returns an echo service for cmd on rdb.
func NewEcho(rdb *redis.Client, cmd string) *Echo {
	return &Echo{RDB: rdb, Cmd: cmd, seen: map[string]int{}}
}

// Run serves until ctx ends.
func (e *Echo) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for range max(e.Workers, 1) {
		wg.Add(1)
		go func() { defer wg.Done(); e.serve(ctx) }()
	}
	wg.Wait()
}

func (e *Echo) serve(ctx context.Context) {
	q := redisapi.CommandQueue(e.Cmd)
	for ctx.Err() == nil {
		res, err := e.RDB.BRPop(ctx, time.Second, q).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		var req redisapi.IncomingRequest
		if err := json.Unmarshal([]byte(res[1]), &req); err != nil {
			continue
		}
		p, _ := base64.StdEncoding.DecodeString(req.Data)
		id := string(p)
		if len(id) > 64 {
			id = id[:64]
		}
		e.mu.Lock()
		e.seen[id]++
		e.mu.Unlock()
		e.served.Add(1)
		if e.Delay > 0 {
			sleepCtx(ctx, e.Delay)
		}
		out := redisapi.OutgoingResponse{Version: 1, Ref: req.Ref, Data: req.Data, Destination: req.Source,
			Schema: req.Schema, Now: time.Now().Unix()}
		if id == "fail" || strings.HasPrefix(id, "fail-") {
			out.Data = ""
			out.Error = &redisapi.Error{Code: 400, Message: "asked to fail"}
		}
		j, _ := json.Marshal(out)
		for ctx.Err() == nil {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := e.RDB.LPush(pctx, redisapi.QueueReply, j).Err()
			cancel()
			if err == nil {
				break
			}
			sleepCtx(ctx, 100*time.Millisecond)
		}
	}
}

// Served is how many requests the service answered.
func (e *Echo) Served() int64 { return e.served.Load() }

// Seen is how many times the service saw id.
func (e *Echo) Seen(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.seen[id]
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// DeadLetters reads the whole dead-letter list of a peer's Redis.
func DeadLetters(ctx context.Context, rdb *redis.Client) ([]redisapi.DeadLetter, error) {
	raw, err := rdb.LRange(ctx, redisapi.QueueDeadLetter, 0, -1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]redisapi.DeadLetter, 0, len(raw))
	for _, s := range raw {
		var d redisapi.DeadLetter
		if err := json.Unmarshal([]byte(s), &d); err != nil {
			return nil, fmt.Errorf("dead letter is not JSON: %w", err)
		}
		out = append(out, d)
	}
	return out, nil
}

// Tally is the outcome of a run, per request id.
type Tally struct {
	Accepted     int            // requests Redis acknowledged
	Rejected     int            // pushes Redis did not acknowledge (not counted anywhere else)
	Answered     int            // every destination answered without error
	Errored      int            // at least one error response, none missing
	DeadLettered int            // errored requests that also have a dead-letter entry
	Timeouts     int            // errored requests with a 408 (no answer before the deadline)
	Lost         int            // accepted, but a destination never got a response: must be 0
	DupResponses int            // responses beyond one per destination
	ServiceDups  int            // deliveries to the service beyond the first, over all ids
	Codes        map[uint32]int // error responses by code
	Orphans      int            // dead letters naming our ret whose ref got no error response: must be 0
	LostIDs      []string       // a few of the lost ids
}

func (t Tally) String() string {
	codes := make([]string, 0, len(t.Codes))
	for c, n := range t.Codes {
		codes = append(codes, fmt.Sprintf("%d:%d", c, n))
	}
	sort.Strings(codes)
	return fmt.Sprintf("accepted=%d answered=%d errored=%d (dead-lettered=%d timeouts=%d codes=[%s]) lost=%d dup_responses=%d service_dups=%d orphan_dead_letters=%d rejected_pushes=%d",
		t.Accepted, t.Answered, t.Errored, t.DeadLettered, t.Timeouts, strings.Join(codes, " "), t.Lost, t.DupResponses, t.ServiceDups, t.Orphans, t.Rejected)
}

// Count builds the tally of bot against the echo service (nil: no service
// duplicates counted) and the dead letters of the bot's peer.
func Count(b *Bot, e *Echo, dead []redisapi.DeadLetter) Tally {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := Tally{Accepted: len(b.accepted), Rejected: b.rejected, Codes: map[uint32]int{}}
	dl := map[string]bool{}
	for _, d := range dead {
		if d.Ret == b.Ret && d.Ref != "" {
			dl[d.Ref] = true
		}
	}
	for _, id := range b.order {
		want := b.accepted[id]
		rs := b.responses[id]
		// One response per destination (by src); more is a duplicate.
		bySrc := map[string]int{}
		errs := 0
		timeout := false
		for _, r := range rs {
			bySrc[r.Source]++
			if r.Error != nil {
				errs++
				t.Codes[r.Error.Code]++
				if r.Error.Code == 408 {
					timeout = true
				}
			}
		}
		distinct := len(bySrc)
		for _, n := range bySrc {
			t.DupResponses += n - 1
		}
		switch {
		case distinct < want:
			t.Lost++
			if len(t.LostIDs) < 10 {
				t.LostIDs = append(t.LostIDs, id)
			}
		case errs == 0:
			t.Answered++
		default:
			t.Errored++
			if dl[id] {
				t.DeadLettered++
			}
			if timeout {
				t.Timeouts++
			}
		}
		if dl[id] && errs == 0 {
			t.Orphans++
		}
	}
	if e != nil {
		e.mu.Lock()
		for id, n := range e.seen {
			if _, ok := b.accepted[id]; ok && n > 1 {
				t.ServiceDups += n - 1
			}
		}
		e.mu.Unlock()
	}
	return t
}

// IDs returns the accepted ids in push order.
func (b *Bot) IDs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.order)
}

// Responses returns what arrived for id.
func (b *Bot) Responses(id string) []redisapi.IncomingResponse {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.responses[id])
}

// Want is how many responses id expects (its destinations).
func (b *Bot) Want(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.accepted[id]
}
