package harness

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
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
	expect    map[string]expectation
	order     []string
	responses map[string][]redisapi.IncomingResponse
	rejected  int            // pushes Redis did not acknowledge
	strays    int            // responses for ids never accepted
	skip      map[string]int // processing-list entries already recorded
}

// expectation is what the answers to a request must show: one response
// from each destination, and (the services here echo) its own payload.
type expectation struct {
	dsts []string // destination twins, as the src of their responses
	dat  [32]byte // SHA-256 of the request's dat (base64)
}

// expectationOf reads the destinations and payload of a request body; ok
// is false when the body is not a request with want destinations.
func expectationOf(body []byte, want int) (e expectation, ok bool) {
	var req redisapi.OutgoingRequest
	if json.Unmarshal(body, &req) != nil {
		return e, false
	}
	for _, d := range req.Destinations {
		s := strconv.FormatUint(uint64(d), 10)
		if !slices.Contains(e.dsts, s) {
			e.dsts = append(e.dsts, s)
		}
	}
	e.dat = sha256.Sum256([]byte(req.Data))
	return e, len(e.dsts) == want
}

// NewBot returns a bot pushing cmd to peer's Redis rdb.
func NewBot(rdb *redis.Client, name, cmd string, ttl int64) *Bot {
	return &Bot{RDB: rdb, Ret: "bot.ret." + name, Cmd: cmd, TTL: ttl, accepted: map[string]int{},
		expect: map[string]expectation{}, responses: map[string][]redisapi.IncomingResponse{}}
}

// Push sends one request with id to dst, id as its payload. It is
// accepted only when Redis acknowledged the push; an unacknowledged push
// is not retried (it may or may not have happened) and counts as
// rejected. It expects one response per distinct destination.
func (b *Bot) Push(ctx context.Context, id string, dst []uint32) error {
	n := 0
	for i, d := range dst {
		if !slices.Contains(dst[:i], d) {
			n++
		}
	}
	return b.PushRaw(ctx, id, n, b.Request(id, dst, []byte(id)))
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
// When body is a request with want destinations, Count checks that each
// of them answered once, with the request's own payload.
func (b *Bot) PushRaw(ctx context.Context, id string, want int, body []byte) error {
	e, checked := expectationOf(body, want)
	b.mu.Lock()
	_, dup := b.accepted[id]
	b.accepted[id] = want
	if checked {
		b.expect[id] = e
	} else {
		delete(b.expect, id)
	}
	b.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := b.RDB.LPush(pctx, redisapi.QueueLocal, body).Err(); err != nil {
		b.mu.Lock()
		b.rejected++
		if !dup {
			delete(b.accepted, id)
			delete(b.expect, id)
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
		if b.answeredLocked(id) < want {
			n++
		}
	}
	return n
}

// answeredLocked is how many destinations of id have a response: distinct
// sources, and only destinations of the request where it is known.
func (b *Bot) answeredLocked(id string) int {
	exp, checked := b.expect[id]
	var srcs []string
	for _, r := range b.responses[id] {
		if !slices.Contains(srcs, r.Source) && (!checked || slices.Contains(exp.dsts, r.Source)) {
			srcs = append(srcs, r.Source)
		}
	}
	return len(srcs)
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

// Tally is the outcome of a run. A request to N destinations is N
// destination outcomes: answered, errored or lost.
type Tally struct {
	Accepted     int            // requests Redis acknowledged
	Rejected     int            // pushes Redis did not acknowledge (not counted anywhere else)
	Destinations int            // responses the accepted requests expect: one per destination
	Answered     int            // destinations answered without error, with their request's own payload
	Errored      int            // destinations answered with an error
	DeadLettered int            // errored destinations whose request also has a dead-letter entry
	Timeouts     int            // errored destinations with a 408 (no answer before the deadline)
	Lost         int            // destinations that never got a response: must be 0
	DupResponses int            // responses beyond one per destination: must be 0 unless Redis died
	Swapped      int            // answers that carry another payload than their request's: must be 0
	WrongSource  int            // responses from a twin the request was not sent to: must be 0
	Strays       int            // responses for ids never accepted (a push Redis ran but did not acknowledge)
	ServiceDups  int            // deliveries to the service beyond the first, over all ids
	Codes        map[uint32]int // error responses by code
	Orphans      int            // dead letters naming our ret whose ref got no error response: must be 0
	LostIDs      []string       // a few of the requests with a lost destination
}

func (t Tally) String() string {
	codes := make([]string, 0, len(t.Codes))
	for c, n := range t.Codes {
		codes = append(codes, fmt.Sprintf("%d:%d", c, n))
	}
	sort.Strings(codes)
	return fmt.Sprintf("accepted=%d destinations=%d answered=%d errored=%d (dead-lettered=%d timeouts=%d codes=[%s]) lost=%d dup_responses=%d swapped=%d wrong_source=%d service_dups=%d orphan_dead_letters=%d rejected_pushes=%d strays=%d",
		t.Accepted, t.Destinations, t.Answered, t.Errored, t.DeadLettered, t.Timeouts, strings.Join(codes, " "), t.Lost,
		t.DupResponses, t.Swapped, t.WrongSource, t.ServiceDups, t.Orphans, t.Rejected, t.Strays)
}

// Clean reports what must never happen, whatever the fault: a lost
// destination, a swapped answer, an answer from the wrong twin, an
// orphan dead letter. Empty when none.
func (t Tally) Clean() string {
	if t.Lost == 0 && t.Swapped == 0 && t.WrongSource == 0 && t.Orphans == 0 {
		return ""
	}
	return fmt.Sprintf("lost=%d (ids %v) swapped=%d wrong_source=%d orphan_dead_letters=%d",
		t.Lost, t.LostIDs, t.Swapped, t.WrongSource, t.Orphans)
}

// Count builds the tally of bot against the echo service (nil: no service
// duplicates counted) and the dead letters of the bot's peer.
func Count(b *Bot, e *Echo, dead []redisapi.DeadLetter) Tally {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := Tally{Accepted: len(b.accepted), Rejected: b.rejected, Strays: b.strays, Codes: map[uint32]int{}}
	dl := map[string]bool{}
	for _, d := range dead {
		if d.Ret == b.Ret && d.Ref != "" {
			dl[d.Ref] = true
		}
	}
	for _, id := range b.order {
		want := b.accepted[id]
		t.Destinations += want
		exp, checked := b.expect[id]
		// The first response of each destination (by src) counts; more
		// are duplicates.
		first := map[string]redisapi.IncomingResponse{}
		var srcs []string
		for _, r := range b.responses[id] {
			if checked && !slices.Contains(exp.dsts, r.Source) {
				t.WrongSource++
				continue
			}
			if _, ok := first[r.Source]; ok {
				t.DupResponses++
				continue
			}
			first[r.Source] = r
			srcs = append(srcs, r.Source)
		}
		if lost := want - len(first); lost > 0 {
			t.Lost += lost
			if len(t.LostIDs) < 10 {
				t.LostIDs = append(t.LostIDs, id)
			}
		}
		errs := 0
		for _, src := range srcs {
			r := first[src]
			switch {
			case r.Error != nil:
				errs++
				t.Errored++
				t.Codes[r.Error.Code]++
				if r.Error.Code == 408 {
					t.Timeouts++
				}
				if dl[id] {
					t.DeadLettered++
				}
			case checked && sha256.Sum256([]byte(r.Data)) != exp.dat:
				t.Swapped++
			default:
				t.Answered++
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
