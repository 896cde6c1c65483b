package peer

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

// Acknowledged delivery into services (at-least-once; BitVMX get/ack).
//
// A service may take a request into a processing list of its own instead
// of popping it (redisapi.Take, the protocol is in docs/protocol.md):
//
//	ZADD   msgbus.system.leases <expiry unix ms> <consumer>
//	BLMOVE msgbus.<cmd> msgbus.system.taken.<consumer> RIGHT LEFT <wait>
//	MULTI; LPUSH msgbus.system.reply <answer>; LREM msgbus.system.taken.<consumer> 1 <request>; EXEC
//
// The peer's part is the lease sweep: every leaseSweepInterval it reads
// the consumers whose lease ran out (at most maxLeaseConsumers a sweep)
// and moves the requests in their processing lists (at most
// maxLeaseEntries each a sweep) back to the serving end of their command
// lists, each with one atomic script (LREM from the processing list, then
// RPUSH), so a request a late consumer acknowledges meanwhile is not put
// back. A request past its deadline is not put back: it is answered 408
// and dead-lettered. An entry that is not a request of a valid command is
// dead-lettered. Once a consumer's list is empty, its lease is dropped
// unless the consumer renewed it meanwhile.
//
// A request answered twice (by a slow consumer and by the one it was
// delivered to again) is answered once: handleReply drops an answer to a
// request this peer already answered (answeredAlready).

const (
	leaseSweepInterval = time.Second
	maxLeaseConsumers  = 100
	maxLeaseEntries    = 1000
	// Reasons counted in rmb_peer_dropped_total.
	dropDuplicateAnswer = "duplicate_answer"
	dropBadConsumer     = "bad_consumer"
	dropBadTaken        = "bad_taken_entry"
	dropTakenExpired    = "taken_expired"
)

type ackState struct {
	redelivered prometheus.Counter
}

func (a *ackState) init(p *Peer) {
	a.redelivered = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rmb_peer_redelivered_total",
		Help: "Requests put back on their command list because the consumer holding them let its lease run out.",
	})
	p.metrics.reg.MustRegister(a.redelivered)
}

// requeueScript moves ARGV[1] from the processing list KEYS[1] back to
// the serving end of the command list KEYS[2]; it returns 1 when it was
// still there.
var requeueScript = redis.NewScript(`
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0`)

// dropScript removes ARGV[1] from the processing list KEYS[1].
var dropScript = redis.NewScript(`return redis.call('LREM', KEYS[1], 1, ARGV[1])`)

// releaseScript drops the lease ARGV[1] from KEYS[2] when its processing
// list KEYS[1] is empty and the lease is still past ARGV[2] (unix ms).
var releaseScript = redis.NewScript(`
if redis.call('LLEN', KEYS[1]) == 0 then
  local s = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if s and tonumber(s) <= tonumber(ARGV[2]) then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return 1
  end
end
return 0`)

// leaseSweeper sweeps the expired leases every leaseSweepInterval.
func (p *Peer) leaseSweeper(ctx context.Context) {
	t := time.NewTicker(leaseSweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := p.sweepLeases(ctx, time.Now()); err != nil && ctx.Err() == nil {
			p.log.Warn("lease sweep failed", "err", err)
		}
	}
}

func (p *Peer) sweepLeases(ctx context.Context, now time.Time) error {
	nowMS := strconv.FormatInt(now.UnixMilli(), 10)
	consumers, err := p.rdb.ZRangeByScore(ctx, redisapi.KeyLeases, &redis.ZRangeBy{
		Min: "-inf", Max: nowMS, Count: maxLeaseConsumers,
	}).Result()
	if err != nil {
		return err
	}
	for _, c := range consumers {
		if err := redisapi.CheckConsumer(c); err != nil {
			p.metrics.dropped.WithLabelValues(dropBadConsumer).Inc()
			p.log.Warn("lease of a bad consumer name dropped", "consumer", strconv.Quote(c), "err", err)
			if err := p.rdb.ZRem(ctx, redisapi.KeyLeases, c).Err(); err != nil {
				return err
			}
			continue
		}
		if err := p.reclaim(ctx, c, nowMS); err != nil {
			return err
		}
	}
	return nil
}

// reclaim puts back the requests of consumer, whose lease ran out.
func (p *Peer) reclaim(ctx context.Context, consumer, nowMS string) error {
	taken := redisapi.QueueTakenPrefix + consumer
	// Oldest at the right end: BLMOVE pushes on the left.
	list, err := p.rdb.LRange(ctx, taken, -maxLeaseEntries, -1).Result()
	if err != nil {
		return err
	}
	n := 0
	for i := len(list) - 1; i >= 0; i-- {
		raw := list[i]
		req, perr := redisapi.ParseIncomingRequestString(raw)
		if perr == nil {
			perr = CheckCommand(req.Command)
		}
		if perr != nil {
			p.metrics.dropped.WithLabelValues(dropBadTaken).Inc()
			if ok, err := dropScript.Run(ctx, p.rdb, []string{taken}, raw).Int(); err != nil {
				return err
			} else if ok == 1 {
				p.deadLetter(ctx, &DeadLetter{Queue: taken, Message: cut(raw), Code: envelope.CodeMalformed,
					Reason: "entry of a processing list is not a request: " + perr.Error()})
			}
			continue
		}
		if req.Expiration > 0 && req.Now > 0 && time.Now().Unix() >= req.Now+int64(min(req.Expiration, 1<<32)) {
			if ok, err := dropScript.Run(ctx, p.rdb, []string{taken}, raw).Int(); err != nil {
				return err
			} else if ok == 1 {
				p.metrics.dropped.WithLabelValues(dropTakenExpired).Inc()
				p.takenExpired(ctx, taken, consumer, req, raw)
			}
			continue
		}
		queue := CommandQueue(req.Command)
		moved, err := requeueScript.Run(ctx, p.rdb, []string{taken, queue}, raw).Int()
		if err != nil {
			return err
		}
		if moved == 1 {
			n++
			p.svc.ack.redelivered.Inc()
			// Known to the command-list bounds and sweep again.
			deadline := time.Unix(req.Now+int64(min(req.Expiration, 1<<32)), 0)
			if p.admit(queue, len(raw), deadline) == "" {
				p.settled(queue, len(raw), true)
			}
		}
	}
	if n > 0 {
		p.log.Warn("requests of a consumer whose lease ran out delivered again", "consumer", consumer, "count", n)
	}
	return releaseScript.Run(ctx, p.rdb, []string{taken, redisapi.KeyLeases}, consumer, nowMS).Err()
}

// takenExpired answers a request that expired in a dead consumer's hands
// with 408 and dead-letters it.
func (p *Peer) takenExpired(ctx context.Context, taken, consumer string, req *IncomingRequest, raw string) {
	d := &DeadLetter{Queue: taken, Message: cut(raw), UID: req.Ref, Code: envelope.CodeTimeout,
		Reason: fmt.Sprintf("consumer %q took the request and let its lease run out; the request expired", consumer)}
	src, err := parseAddress(req.Source)
	if err == nil {
		d.Dst = src.twin
	}
	p.deadLetter(ctx, d)
	if err == nil {
		p.sendError(ctx, req.Ref, src, envelope.CodeTimeout,
			"the service took the request for "+strconv.Quote(req.Command)+" and did not answer before its deadline", time.Time{})
	}
}

func cut(raw string) string {
	if len(raw) > deadLetterDatLimit {
		return raw[:deadLetterDatLimit]
	}
	return raw
}

// answeredAlready reports whether this peer already sent an answer to the
// request uid from dst (and still remembers it).
func (p *Peer) answeredAlready(uid string, dst address) bool {
	key := newSeenKey(uid, dst, envelope.KindRequest)
	p.seenMu.Lock()
	defer p.seenMu.Unlock()
	return p.answers[key] != nil
}
