package peer

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Requests from Redis clients outlive the peer process: which request an
// answer belongs to is kept in the hash PendingHash as well as in memory,
// one field per (uid, destination) still waiting:
//
//	HSET msgbus.system.pending <uid>/<dst> {"ret":..,"ref":..,"deadline":..,"sent":..,"envelope":..}
//
// The field is written by redisLoop in the same MULTI/EXEC as the LREM of
// the request from LocalProcessing, once every envelope was handed to a
// relay: after a crash either the message is still in the processing list
// (and is sent again with a new uid) or its destinations are in the hash,
// never neither. redisLoop reads the destinations still waiting when it
// builds the transaction, and a destination answered after that is
// deleted by an HDEL queued behind it, so no field outlives its answer.
// The HDEL goes in the same MULTI/EXEC as the push of the answer on ret
// (runBatch): after a crash the client has the answer and the field is
// gone, or neither, never an answer and then a 408 (or a second answer)
// for the same destination.
//
// Run loads the hash before it connects to any relay, so answers the
// relays kept for the twin while the peer was down find their request;
// requests whose deadline passed are answered with 408 by the sweeper as
// usual. The signed envelope is kept so the request can be sent again:
// once at start (the answer may have died with the process that read it,
// or in a socket buffer; the receiver answers a duplicate from its
// cache), and like any other after a relay connection loss or when it
// stays unanswered (resend.go).

// PendingHash holds the requests from Redis clients waiting for answers.
const PendingHash = "msgbus.system.pending"

// pendingRecord is the value of a PendingHash field.
type pendingRecord struct {
	Ret      string `json:"ret"`      // the client's ret queue
	Ref      string `json:"ref"`      // the client's ref
	Deadline int64  `json:"deadline"` // unix milliseconds
	Sent     int64  `json:"sent"`     // unix milliseconds
	Envelope []byte `json:"envelope"` // the signed request sent to this destination
}

// appendJSON appends json.Marshal(r) to b. A record whose ret and ref
// need no escaping (the usual: queue names and refs are plain ASCII) is
// written without reflection; any other goes through encoding/json.
func (r *pendingRecord) appendJSON(b []byte) []byte {
	if !plainJSON(r.Ret) || !plainJSON(r.Ref) {
		out, _ := json.Marshal(r) // cannot fail: strings, numbers, bytes
		return append(b, out...)
	}
	b = append(b, `{"ret":"`...)
	b = append(b, r.Ret...)
	b = append(b, `","ref":"`...)
	b = append(b, r.Ref...)
	b = append(b, `","deadline":`...)
	b = strconv.AppendInt(b, r.Deadline, 10)
	b = append(b, `,"sent":`...)
	b = strconv.AppendInt(b, r.Sent, 10)
	b = append(b, `,"envelope":`...)
	if r.Envelope == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, r.Envelope)
		b = append(b, '"')
	}
	return append(b, '}')
}

// plainJSON reports whether encoding/json writes s as it is, between
// quotes (printable ASCII but for the characters it escapes).
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func pendingField(uid string, dst uint32) string {
	return uid + "/" + strconv.FormatUint(uint64(dst), 10)
}

func parsePendingField(f string) (uid string, dst uint32, ok bool) {
	i := strings.LastIndexByte(f, '/')
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.ParseUint(f[i+1:], 10, 32)
	if err != nil || n == 0 {
		return "", 0, false
	}
	return f[:i], uint32(n), true
}

// pendingFields is pendingFieldsOf each of uids, the uids of one message
// from LocalQueue separated by spaces (a request listing a destination
// twice goes as several, startCopies; a uid has no space).
func (p *Peer) pendingFields(uids string) []any {
	var fields []any
	for _, uid := range strings.Fields(uids) {
		fields = append(fields, p.pendingFieldsOf(uid)...)
	}
	return fields
}

// pendingFieldsOf marks the request uid as persisted and returns the HSET
// field/value pairs of its destinations still waiting; nil when it is not
// a Redis request or nothing waits any more. Only redisLoop calls it (see
// above for why).
func (p *Peer) pendingFieldsOf(uid string) []any {
	type dstEnv struct {
		dst uint32
		env []byte
	}
	var (
		list []dstEnv
		rec  pendingRecord
	)
	p.pendMu.Lock()
	pd := p.pending[uid]
	if pd != nil && pd.ret != "" {
		pd.persisted = true
		rec = pendingRecord{Ret: pd.ret, Ref: pd.ref, Deadline: pd.deadline.UnixMilli(), Sent: pd.sent.UnixMilli()}
		for d, b := range pd.waiting {
			if b != nil {
				list = append(list, dstEnv{d, b})
			}
		}
	}
	p.pendMu.Unlock()
	if len(list) == 0 {
		return nil
	}
	fields := make([]any, 0, 2*len(list))
	for _, de := range list {
		rec.Envelope = de.env
		b := rec.appendJSON(make([]byte, 0, 96+len(rec.Ret)+len(rec.Ref)+base64.StdEncoding.EncodedLen(len(de.env))))
		fields = append(fields, pendingField(uid, de.dst), b)
	}
	return fields
}

// forgetOp deletes an answered or timed-out destination of uid from
// PendingHash. A deliver function queues it once the answer was
// delivered (pushAsync's after).
func forgetOp(uid string, dst uint32) *writeOp {
	return &writeOp{forget: []string{pendingField(uid, dst)}}
}

// loadPending reads PendingHash into the pending requests, retrying while
// Redis is unavailable, until ctx ends.
func (p *Peer) loadPending(ctx context.Context) error {
	delay := 100 * time.Millisecond
	for {
		all, err := p.rdb.HGetAll(ctx, PendingHash).Result()
		if err == nil {
			p.addPending(all)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.log.Warn("cannot load pending requests from redis; retrying", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// addPending registers the requests of PendingHash fields. Malformed
// fields are deleted.
func (p *Peer) addPending(all map[string]string) {
	var bad []string
	n := 0
	p.pendMu.Lock()
	for f, v := range all {
		uid, dst, ok := parsePendingField(f)
		var rec pendingRecord
		if !ok || json.Unmarshal([]byte(v), &rec) != nil || rec.Ret == "" || len(rec.Envelope) == 0 {
			bad = append(bad, f)
			continue
		}
		pd := p.pending[uid]
		if pd == nil {
			deadline := time.UnixMilli(rec.Deadline)
			pd = &pending{
				uid:       uid,
				sent:      time.UnixMilli(rec.Sent),
				deadline:  deadline,
				waiting:   make(map[uint32][]byte),
				deliver:   p.deliverToQueue(rec.Ret, rec.Ref, deadline),
				ret:       rec.Ret,
				ref:       rec.Ref,
				persisted: true,
				reloaded:  true, // its answer may have died with the last run
			}
			// Timed re-sends go on from where the schedule stands.
			now := time.Now()
			for pd.resendAt = pd.nextResend(); pd.resends < maxResends && !now.Before(pd.resendAt); pd.resendAt = pd.nextResend() {
				pd.resends++
			}
			p.pending[uid] = pd
		}
		pd.waiting[dst] = rec.Envelope
		n++
	}
	p.pendMu.Unlock()
	if n > 0 {
		p.log.Info("loaded requests waiting for answers from an earlier run", "destinations", n)
	}
	if len(bad) > 0 {
		p.log.Warn("malformed pending requests deleted", "fields", bad)
		p.write(writeOp{forget: bad})
	}
}

// Most requests are answered within a few milliseconds. Writing such a
// request to PendingHash (HSET with the LREM of its message, in one
// MULTI/EXEC) only to delete it again (HDEL with the push of its answer,
// in another) costs two transactions for nothing. So the first of them
// waits finishDelay (finishLater): an answer that comes meanwhile takes
// the LREM into the transaction of its push instead (takeFinish), and the
// request never goes to PendingHash. The guarantees stay: the message
// leaves LocalProcessing together with the persisting of its request or
// with the push of its answer, never without either; a crash in the wait
// leaves the message in LocalProcessing, sent again on restart like one
// popped and not yet sent (at-least-once, as before, over a window of
// finishDelay instead of a round trip to Redis). A stopping peer writes
// what waits at once (localLoop).
//
// Only a request with one uid and one destination, sent, waits: with more
// an answer may be pushed while others are still to come, and the message
// must be gone by then.

// finishDelay is how long finishLater waits for an answer before it
// persists the request (longer while Redis is down: flushLater).
const finishDelay = 25 * time.Millisecond

// laterFinishes is finishLater's queue, oldest first (all wait
// finishDelay), run by one timer.
type laterFinishes struct {
	mu     sync.Mutex
	queue  []laterFinish
	timer  *time.Timer
	closed bool // the peer is stopping: finish at once
}

type laterFinish struct {
	uid, raw string
	due      time.Time
}

// finishLater finishes raw, the LocalProcessing message the requests uids
// came from (finish), or leaves it to the answer or to finishDelay's end
// when it can (see above).
func (p *Peer) finishLater(raw string, uids []string) {
	if len(uids) == 1 && p.batch != nil {
		l := &p.batch.later
		l.mu.Lock()
		if !l.closed {
			p.pendMu.Lock()
			pd := p.pending[uids[0]]
			ok := pd != nil && pd.ret != "" && !pd.persisted && pd.finishRaw == "" && len(pd.waiting) == 1
			if ok {
				for _, b := range pd.waiting {
					ok = b != nil // sent
				}
			}
			if ok {
				pd.finishRaw = raw
			}
			p.pendMu.Unlock()
			if ok {
				l.queue = append(l.queue, laterFinish{uid: uids[0], raw: raw, due: time.Now().Add(finishDelay)})
				if len(l.queue) == 1 {
					if l.timer == nil {
						l.timer = time.AfterFunc(finishDelay, func() { p.flushLater(false) })
					} else {
						l.timer.Reset(finishDelay)
					}
				}
				l.mu.Unlock()
				return
			}
		}
		l.mu.Unlock()
	}
	p.finish(LocalProcessing, raw, strings.Join(uids, " "))
}

// takeFinish takes the LocalProcessing message whose removal waits for
// pd's answer, "" if none. The caller holds pendMu.
func takeFinish(pd *pending) string {
	raw := pd.finishRaw
	pd.finishRaw = ""
	return raw
}

// withFinish adds to after (which may be nil) the removal of raw from
// LocalProcessing, for the transaction of an answer's push.
func withFinish(after *writeOp, raw string) *writeOp {
	w := writeOp{processing: LocalProcessing, raw: raw}
	if after != nil {
		w.forget = after.forget
	}
	return &w
}

// flushLater finishes, persisting their requests, the waiting messages
// whose time came (all of them when stopping, and from then on
// finishLater finishes at once) and no answer took.
func (p *Peer) flushLater(stopping bool) {
	l := &p.batch.later
	l.mu.Lock()
	now := time.Now()
	if !stopping && p.batch.failing.Load() && len(l.queue) > 0 {
		// Redis is down: a finish written now would fail, and once its
		// retries are spent its message would be sent again while its
		// answer may still come. Wait for Redis, or for the answer
		// (which takes the finish along with its push, retried as long
		// as the request lives).
		l.timer.Reset(finishDelay)
		l.mu.Unlock()
		return
	}
	n := 0
	for n < len(l.queue) && (stopping || !now.Before(l.queue[n].due)) {
		n++
	}
	due := l.queue[:n:n]
	if n == len(l.queue) {
		l.queue = nil
	} else {
		l.queue = l.queue[n:]
		l.timer.Reset(l.queue[0].due.Sub(now))
	}
	if stopping {
		l.closed = true
	}
	l.mu.Unlock()
	for _, f := range due {
		p.pendMu.Lock()
		pd := p.pending[f.uid]
		take := pd != nil && pd.finishRaw == f.raw
		if take {
			pd.finishRaw = ""
		}
		p.pendMu.Unlock()
		if take {
			p.finish(LocalProcessing, f.raw, f.uid)
		}
	}
}
