package relay

import (
	"context"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
)

// sharedReplay is the federation replay guard of a relay cluster, in the
// Redis of Options.FederationRedis, so that a POST replayed to another
// instance is recognised as well. It follows replayGuard: an entry lives
// until the envelope's deadline, it may be delivered again
// maxRedeliveries times, and at most max entries are held (the ones
// closest to their deadline go first when full).
//
// A sorted set "rmb:relay:replay:{<first domain>}:z" holds the keys (hex)
// scored by deadline (unix seconds); a hash ":h" next to it the
// redelivery counts. Both sit under one hash tag and are changed by Lua
// only; both expire once the latest deadline they could hold has passed.
type sharedReplay struct {
	client redis.UniversalClient
	keys   []string // zset, hash
	max    int
}

func newSharedReplay(client redis.UniversalClient, domain string, max int) *sharedReplay {
	tag := "rmb:relay:replay:{" + strings.ToLower(domain) + "}"
	return &sharedReplay{client: client, keys: []string{tag + ":z", tag + ":h"}, max: max}
}

var (
	// KEYS: zset, hash. ARGV: member, now, max redeliveries.
	// Returns 1 for a replay (deliver nothing), 0 to deliver.
	replayCheckScript = redis.NewScript(`
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) < tonumber(ARGV[2]) then return 0 end
local n = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if n < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[2], ARGV[1], n + 1)
  return 0
end
return 1`)
	// KEYS: zset, hash. ARGV: member, deadline, now, max entries, key ttl ms.
	replayAddScript = redis.NewScript(`
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3], 'LIMIT', 0, 256)
for _, m in ipairs(old) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
while redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) do
  local p = redis.call('ZPOPMIN', KEYS[1])
  redis.call('HDEL', KEYS[2], p[1])
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1`)
)

// replayKeyTTL: no entry outlives now + MaxTTL + skew (deadlineTooFar
// refuses the rest), so the keys may go a minute after that.
const replayKeyTTL = envelope.MaxTTL*time.Second + maxClockSkew + time.Minute

// replayed reports whether key was accepted before (by any instance) and
// may not be delivered again; an envelope accepted before counts one of
// its redeliveries.
func (g *sharedReplay) replayed(key replayKey, now time.Time) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), fedStoreTimeout)
	defer cancel()
	n, err := replayCheckScript.Run(ctx, g.client, g.keys, hex.EncodeToString(key[:]),
		now.Unix(), maxRedeliveries).Int()
	return n == 1, err
}

// add records key until deadline.
func (g *sharedReplay) add(key replayKey, deadline, now time.Time) error {
	ctx, cancel := context.WithTimeout(context.Background(), fedStoreTimeout)
	defer cancel()
	return replayAddScript.Run(ctx, g.client, g.keys, hex.EncodeToString(key[:]),
		deadline.Unix(), now.Unix(), g.max, strconv.FormatInt(replayKeyTTL.Milliseconds(), 10)).Err()
}

// isReplay checks key against the shared guard in a cluster (the local
// one when Redis fails: an instance then only knows its own), against the
// local one otherwise.
func (f *federator) isReplay(key replayKey, now time.Time) bool {
	if f.shared != nil {
		rep, err := f.shared.replayed(key, now)
		if err == nil {
			return rep
		}
		f.r.log.Warn("shared replay guard failed, using this instance's", "err", err)
	}
	return f.replay.seen(key, now) && !f.replay.again(key)
}

// accepted remembers key until deadline, here and in the shared guard.
func (f *federator) accepted(key replayKey, deadline, now time.Time) {
	f.replay.add(key, deadline, now)
	if f.shared != nil {
		if err := f.shared.add(key, deadline, now); err != nil {
			f.r.log.Warn("shared replay guard not updated", "err", err)
		}
	}
}
