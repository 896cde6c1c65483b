package relay

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

// Limits per twin and session ownership across the instances of a
// cluster, in the cluster's Redis (Lua only, Redis's own clock):
//
//	rmb:relay:sess:<first domain>:{<twin>}  a hash: for each session id
//	    (base64url) of the twin that an instance admitted, "<lease expiry,
//	    unix ms>|<owner token>". The token is "<instance>/<random>",
//	    one per connection.
//	rmb:relay:rate:<first domain>:{<twin>}  a hash: the twin's shared
//	    token bucket ("m", "b": tokens left, "t": last refill, unix ms).
//
// Admitting a connection (claimScript) removes the expired leases,
// refuses the connection when the twin holds MaxSessionsPerTwin other
// live sessions, and otherwise writes its own token over the session id's
// field, returning the token it replaced. Claims are thus ordered by
// Redis: the connection that claimed last owns the session. Before it
// claims, an instance records the connection as pending; after the
// upgrade it asks the previous owner's instance, by name, to give the
// session up (a takeover on the instance's own subject, whose interest
// has long spread over the NATS routes), and subscribes only when that
// instance answered. The previous owner answers once its connection is
// closed and unsubscribed (its unsent envelopes back in the store), or,
// when that connection is still pending, once it gave up before
// subscribing (it closes with 4000 and writes nothing). Each connection
// thus subscribes only after its predecessor in the Redis order stopped
// being subscribed: however many connect to however many instances at
// the same instant, at most one instance takes deliveries for the
// session at any time, and the last claimer holds it.
//
// Each instance refreshes the leases of its sessions every leaseRefresh
// (refreshScript): a lease whose token is no longer its own closes the
// session; a lease that vanished (Redis restarted empty, or unreachable
// for longer than a lease) is written again. A session that ends deletes
// its lease when the token is still its own; the leases of an instance
// that dies expire after leaseTTL.
var (
	leaseTTL     = 30 * time.Second
	leaseRefresh = 10 * time.Second
)

// clusterRedisTimeout bounds one call to the cluster's Redis on the
// connect path and the envelope path.
const clusterRedisTimeout = 2 * time.Second

var (
	// KEYS: the twin's hash. ARGV: sid, token, lease ms, max sessions.
	// Returns {1, previous token or ""} or {0} when the twin is full.
	claimScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live, prev = 0, ''
for i = 1, #all, 2 do
  local exp, tok = string.match(all[i + 1], '^(%d+)|(.*)$')
  if not exp or tonumber(exp) < now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] == ARGV[1] then
    prev = tok
  else
    live = live + 1
  end
end
if prev == '' and live >= tonumber(ARGV[4]) then return {0} end
local lease = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], (now + lease) .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease)
return {1, prev}`)
	// KEYS: the twin's hash. ARGV: sid, token, lease ms. Returns 1 when
	// the lease was extended, 2 when it was written again, 0 when another
	// token owns sid.
	refreshScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
local v = redis.call('HGET', KEYS[1], ARGV[1])
local res = 2
if v then
  local exp, tok = string.match(v, '^(%d+)|(.*)$')
  if tok ~= ARGV[2] and exp and tonumber(exp) >= now then return 0 end
  if tok == ARGV[2] then res = 1 end
end
redis.call('HSET', KEYS[1], ARGV[1], (now + lease) .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease)
return res`)
	// KEYS: the twin's hash. ARGV: sid, token. Deletes the lease when
	// token owns it.
	releaseScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local _, tok = string.match(v, '^(%d+)|(.*)$')
if tok ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1`)
)

// leaseKey is the Redis hash of twin's session leases.
func (c *cluster) leaseKey(twin uint32) string {
	return "rmb:relay:sess:" + strings.ToLower(c.r.opts.Domains[0]) + ":{" + strconv.FormatUint(uint64(twin), 10) + "}"
}

func leaseField(sid string) string { return base64.RawURLEncoding.EncodeToString([]byte(sid)) }

// newToken names one connection of this instance.
func (c *cluster) newToken() string {
	var b [9]byte
	rand.Read(b[:])
	return c.instance + "/" + base64.RawURLEncoding.EncodeToString(b[:])
}

// redisFailed counts a failed call to the cluster's Redis and logs it (at
// most once every 10 s).
func (c *cluster) redisFailed(what string, err error) {
	c.counts[clusterRedisError].Add(1)
	now := time.Now().UnixNano()
	if last := c.redisWarned.Load(); now-last > int64(10*time.Second) && c.redisWarned.CompareAndSwap(last, now) {
		c.r.log.Warn("cluster Redis failed: limits and ownership fall back to this instance", "op", what, "err", err)
	}
}

// claim admits a new connection of k with token: it answers the token of
// the connection it takes the session from ("" for none), or the HTTP
// status and reason to refuse it with. When Redis cannot be asked, the
// connection is let in (counted by this instance only) and err is set.
func (c *cluster) claim(k SessionKey, token string) (prev string, status int, reason string, err error) {
	ctx, cancel := context.WithTimeout(c.r.ctx, clusterRedisTimeout)
	defer cancel()
	res, err := claimScript.Run(ctx, c.redis, []string{c.leaseKey(k.Twin)}, leaseField(k.SID), token,
		c.leaseTTL.Milliseconds(), c.r.opts.MaxSessionsPerTwin).Slice()
	if err != nil {
		c.redisFailed("claim", err)
		return "", 0, "", err
	}
	if n, _ := res[0].(int64); n == 0 {
		c.r.counters.refuse(refuseTwinSessions)
		return "", http.StatusTooManyRequests, "too many sessions of this twin", nil
	}
	if len(res) > 1 {
		prev, _ = res[1].(string)
	}
	return prev, 0, "", nil
}

// release deletes k's lease if token holds it.
func (c *cluster) release(k SessionKey, token string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.r.ctx), clusterRedisTimeout)
	defer cancel()
	if err := releaseScript.Run(ctx, c.redis, []string{c.leaseKey(k.Twin)}, leaseField(k.SID), token).Err(); err != nil {
		c.redisFailed("release", err)
	}
}

// refreshLeases extends the leases of every local session every
// leaseRefresh, until the relay shuts down, and closes the sessions whose
// lease another connection took.
func (c *cluster) refreshLeases() {
	for {
		t := time.NewTimer(c.leaseEvery)
		select {
		case <-c.r.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		c.refreshOnce()
	}
}

func (c *cluster) refreshOnce() {
	const batch = 512
	live := c.r.liveSessions(nil)
	if len(live) == 0 {
		return
	}
	// EVALSHA in a pipeline does not fall back to EVAL: load it first.
	ctx, cancel := context.WithTimeout(c.r.ctx, clusterRedisTimeout)
	err := refreshScript.Load(ctx, c.redis).Err()
	cancel()
	if err != nil {
		c.redisFailed("refresh", err)
		return
	}
	for len(live) > 0 {
		n := min(batch, len(live))
		part := live[:n]
		live = live[n:]
		ctx, cancel := context.WithTimeout(c.r.ctx, clusterRedisTimeout)
		cmds := make([]*redis.Cmd, len(part))
		_, err := c.redis.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, s := range part {
				cmds[i] = refreshScript.EvalSha(ctx, p, []string{c.leaseKey(s.key.Twin)}, leaseField(s.key.SID), s.token, c.leaseTTL.Milliseconds())
			}
			return nil
		})
		cancel()
		if err != nil {
			c.redisFailed("refresh", err)
			if c.r.ctx.Err() != nil {
				return
			}
			continue
		}
		for i, s := range part {
			if v, err := cmds[i].Int(); err == nil && v == 0 {
				s.log.Info("session owned by a newer connection to another instance, closing")
				s.close(statusReplaced, "replaced by a newer connection to another instance")
			}
		}
	}
}

// pendingClaim is a connection of this instance that claimed a session
// and is not registered yet.
type pendingClaim struct {
	cancelled bool          // a later claim took the session: do not register
	done      chan struct{} // closed when the connection registered or gave up
}

// addPending records a connection about to claim a session.
func (c *cluster) addPending(token string) {
	c.mu.Lock()
	c.pending[token] = &pendingClaim{done: make(chan struct{})}
	c.mu.Unlock()
}

// endPending ends the pending state of token.
func (c *cluster) endPending(token string) {
	c.mu.Lock()
	pc := c.pending[token]
	delete(c.pending, token)
	c.mu.Unlock()
	if pc != nil {
		close(pc.done)
	}
}

// cancelPending makes a pending connection give up, and waits until it
// registered (it was too far along: it is then live) or gave up.
func (c *cluster) cancelPending(token string) {
	c.mu.Lock()
	pc := c.pending[token]
	if pc != nil {
		pc.cancelled = true
	}
	c.mu.Unlock()
	if pc == nil {
		return
	}
	t := time.NewTimer(clusterTakeoverTimeout)
	defer t.Stop()
	select {
	case <-pc.done:
	case <-t.C:
	}
}

// cancelled reports whether a later claim took token's session; r.mu is
// held by register.
func (c *cluster) cancelled(token string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	pc := c.pending[token]
	return pc != nil && pc.cancelled
}

// takeoverSubject is where instance takes the takeovers of its
// connections.
func (c *cluster) takeoverSubject(instance string) string {
	return strings.TrimSuffix(c.prefix, "s.") + "t." + hex.EncodeToString([]byte(instance))
}

const (
	hdrSID   = "Rmb-Sid"
	hdrToken = "Rmb-Token"
)

// takeoverFrom asks the instance that made prev (a token) to close that
// connection of k and returns once it did, or at once when that instance
// is gone (NATS no responders) or is this one (register replaces a local
// session).
func (c *cluster) takeoverFrom(k SessionKey, prev string) {
	i := strings.LastIndexByte(prev, '/')
	if i < 0 {
		return
	}
	inst := prev[:i]
	if inst == c.instance {
		// A live one is replaced by register; a pending one gives up.
		c.cancelPending(prev)
		return
	}
	msg := nats.NewMsg(c.takeoverSubject(inst))
	msg.Header.Set(hdrTwin, strconv.FormatUint(uint64(k.Twin), 10))
	msg.Header.Set(hdrSID, hex.EncodeToString([]byte(k.SID)))
	msg.Header.Set(hdrToken, prev)
	_, err := c.nc.RequestMsg(msg, clusterTakeoverTimeout)
	switch {
	case err == nil:
		c.counts[clusterTakeovers].Add(1)
	case errors.Is(err, nats.ErrNoResponders):
	default:
		c.r.log.Warn("session takeover not confirmed", "twin", k.Twin, "from", inst, "err", err)
	}
}

// handleTakeover closes the connection of this instance named by a
// takeover request, if it is live, and answers once it is gone.
func (c *cluster) handleTakeover(msg *nats.Msg) {
	twin, err := strconv.ParseUint(msg.Header.Get(hdrTwin), 10, 32)
	sid, err2 := hex.DecodeString(msg.Header.Get(hdrSID))
	if err != nil || err2 != nil {
		msg.Respond(nil)
		return
	}
	k := SessionKey{Twin: uint32(twin), SID: string(sid)}
	tok := msg.Header.Get(hdrToken)
	go func() {
		// A pending connection gives up; whatever holds the session here
		// then claimed it before the requester did (a later claim would
		// wait for the requester): the pending one's predecessor, which
		// it would have replaced, or tok itself.
		c.cancelPending(tok)
		c.handOver(k, msg)
	}()
}

// sharedLimiter is the per-twin rate limit of a cluster: one token bucket
// per twin in Redis (rateScript), from which each instance takes budget in
// chunks of 1/16 of the limit (at least one envelope, and the bytes of the
// envelope at hand) into a local allowance, so most envelopes cost no
// Redis round trip. Budget taken is never given back: over all instances
// a twin passes at most the bucket's burst plus its rate, whatever the
// number of instances its sessions use. When Redis cannot be asked, the
// instance's own bucket (a local limiter) decides.
type sharedLimiter struct {
	c      *cluster
	cfg    RateLimit
	local  *limiter
	chunkM int64
	chunkB int64

	mu     sync.Mutex // guards grants
	grants map[uint32]*grant
}

type grant struct {
	msgs, bytes int64
	last        time.Time
}

func newSharedLimiter(c *cluster, local *limiter) *sharedLimiter {
	cfg := local.cfg
	return &sharedLimiter{
		c: c, cfg: cfg, local: local,
		chunkM: max(1, int64(cfg.Messages)/16),
		chunkB: cfg.Bytes / 16,
		grants: make(map[uint32]*grant),
	}
}

// KEYS: the twin's bucket. ARGV: messages and bytes per window (0: no
// limit), window ms, messages and bytes wanted. Returns the messages and
// bytes granted.
var rateScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cm, cb, win = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'm', 'b', 't')
local m, b, last = tonumber(v[1]) or cm, tonumber(v[2]) or cb, tonumber(v[3]) or now
local el = now - last
if el > 0 then
  m = math.min(cm, m + el * cm / win)
  b = math.min(cb, b + el * cb / win)
  last = now
end
local gm, gb = tonumber(ARGV[4]), tonumber(ARGV[5])
if cm > 0 then gm = math.max(0, math.min(gm, math.floor(m))) end
if cb > 0 then gb = math.max(0, math.min(gb, math.floor(b))) end
if cm > 0 then m = m - gm end
if cb > 0 then b = b - gb end
redis.call('HSET', KEYS[1], 'm', tostring(m), 'b', tostring(b), 't', last)
redis.call('PEXPIRE', KEYS[1], win + 1000)
return {gm, gb}`)

func (l *sharedLimiter) key(twin uint32) string {
	return "rmb:relay:rate:" + strings.ToLower(l.c.r.opts.Domains[0]) + ":{" + strconv.FormatUint(uint64(twin), 10) + "}"
}

// take spends one envelope of size bytes from g; l.mu is held.
func (l *sharedLimiter) take(g *grant, size int) bool {
	if (l.cfg.Messages > 0 && g.msgs < 1) || (l.cfg.Bytes > 0 && g.bytes < int64(size)) {
		return false
	}
	g.msgs--
	g.bytes -= int64(size)
	return true
}

func (l *sharedLimiter) allow(twin uint32, size int, now time.Time) bool {
	l.mu.Lock()
	g := l.grants[twin]
	if g == nil {
		g = &grant{}
		l.grants[twin] = g
	}
	g.last = now
	if l.take(g, size) {
		l.mu.Unlock()
		return true
	}
	var wantM, wantB int64
	if l.cfg.Messages > 0 && g.msgs < 1 {
		wantM = l.chunkM
	}
	if l.cfg.Bytes > 0 && g.bytes < int64(size) {
		wantB = max(l.chunkB, int64(size)-g.bytes)
	}
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(l.c.r.ctx, clusterRedisTimeout)
	res, err := rateScript.Run(ctx, l.c.redis, []string{l.key(twin)}, l.cfg.Messages, l.cfg.Bytes,
		l.cfg.Window.Milliseconds(), wantM, wantB).Int64Slice()
	cancel()
	if err != nil || len(res) != 2 {
		l.c.redisFailed("rate", err)
		return l.local.allow(twin, size, now)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	g.msgs += res[0]
	g.bytes += res[1]
	return l.take(g, size)
}

// sweep forgets the allowances of twins idle for a window (what they
// held is spent: the shared bucket refilled meanwhile).
func (l *sharedLimiter) sweep(now time.Time) {
	l.local.sweep(now)
	l.mu.Lock()
	defer l.mu.Unlock()
	for twin, g := range l.grants {
		if now.Sub(g.last) >= l.cfg.Window {
			delete(l.grants, twin)
		}
	}
}

// allowRate applies the rate limit of twin: the cluster's shared one in a
// cluster, this process's otherwise. r.limiter is not nil.
func (r *Relay) allowRate(twin uint32, size int, now time.Time) bool {
	if r.cl != nil && r.cl.rate != nil {
		return r.cl.rate.allow(twin, size, now)
	}
	return r.limiter.allow(twin, size, now)
}

// clusterRedis is the Redis the instances of a cluster share for limits
// and ownership: FederationRedis, else the RedisStore's client.
func clusterRedis(o *Options) redis.UniversalClient {
	if o.FederationRedis != nil {
		return o.FederationRedis
	}
	if rs, ok := o.Store.(*RedisStore); ok {
		return rs.client
	}
	return nil
}
