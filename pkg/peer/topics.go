package peer

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rmb-go/rmb/pkg/redisapi"
)

// Topics (docs/protocol.md, "Topics").
//
// A twin publishes events on topics it owns: names are scoped by the
// owner twin, so nobody can publish on another twin's topic. Other twins
// subscribe to an owner's topics with MQTT-style patterns. The
// subscriber's peer asks the owner's peer for a lease with the built-in
// command CmdSubscribe (renewed with CmdRenew, ended with
// CmdUnsubscribe); the owner's peer answers itself, after its policy,
// and keeps the lease in its Redis. Publishing fans out at the
// publisher's peer: one envelope per subscriber twin (command CmdEvent),
// signed, and encrypted for that twin unless the topic is public.

// Built-in topic commands, answered by the peer itself.
const (
	CmdSubscribe   = "rmb.sub.subscribe"
	CmdRenew       = "rmb.sub.renew"
	CmdUnsubscribe = "rmb.sub.unsubscribe"
	CmdEvent       = "rmb.sub.event"
)

// Topic name limits.
const (
	// MaxTopicLen is the longest topic name or pattern, in bytes.
	MaxTopicLen = 256
	// MaxTopicLevels is the most '/'-separated levels of a topic.
	MaxTopicLevels = 16
	// TopicChars are the characters a level may hold besides ASCII
	// letters and digits.
	TopicChars = "._-:@=~"
)

// ErrBadTopic means a topic name or pattern was refused.
var ErrBadTopic = errors.New("bad topic")

// CheckTopic reports whether name is a valid topic to publish on:
// 1 to MaxTopicLen bytes, at most MaxTopicLevels non-empty levels
// separated by '/', each of letters, digits and TopicChars. No wildcard.
func CheckTopic(name string) error { return checkTopic(name, false) }

// CheckTopicPattern reports whether pattern is a valid subscription
// pattern: a topic name whose levels may also be '+' (any one level) or,
// as the last level, '#' (any number of levels, zero included).
func CheckTopicPattern(pattern string) error { return checkTopic(pattern, true) }

func checkTopic(s string, pattern bool) error {
	what := "topic"
	if pattern {
		what = "topic pattern"
	}
	switch {
	case s == "":
		return fmt.Errorf("%w: empty %s", ErrBadTopic, what)
	case len(s) > MaxTopicLen:
		return fmt.Errorf("%w: %s of %d bytes, at most %d", ErrBadTopic, what, len(s), MaxTopicLen)
	}
	levels := strings.Split(s, "/")
	if len(levels) > MaxTopicLevels {
		return fmt.Errorf("%w: %s of %d levels, at most %d", ErrBadTopic, what, len(levels), MaxTopicLevels)
	}
	for i, l := range levels {
		if l == "" {
			return fmt.Errorf("%w: %s %s has an empty level", ErrBadTopic, what, quoteShort(s))
		}
		if l == "+" || l == "#" {
			if !pattern {
				return fmt.Errorf("%w: wildcard %q in %s %s (publish on a name, subscribe with a pattern)", ErrBadTopic, l, what, quoteShort(s))
			}
			if l == "#" && i != len(levels)-1 {
				return fmt.Errorf("%w: '#' must be the last level of %s", ErrBadTopic, quoteShort(s))
			}
			continue
		}
		for j := 0; j < len(l); j++ {
			c := l[j]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(TopicChars, c) >= 0) {
				if c == '+' || c == '#' {
					return fmt.Errorf("%w: %q must be a whole level in %s", ErrBadTopic, c, quoteShort(s))
				}
				return fmt.Errorf("%w: byte 0x%02x in %s (allowed: letters, digits, %q and '/' between levels)", ErrBadTopic, c, what, TopicChars)
			}
		}
	}
	return nil
}

// quoteShort quotes s when it is short enough to log.
func quoteShort(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%q...", s[:64])
	}
	return fmt.Sprintf("%q", s)
}

// MatchTopic reports whether topic matches pattern (MQTT rules: '+' is
// one level, a last '#' is any number of levels, none included, so
// "a/#" matches "a"). Both are assumed valid.
func MatchTopic(pattern, topic string) bool {
	for {
		pl, prest, pmore := strings.Cut(pattern, "/")
		if pl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if pl != "+" && pl != tl {
			return false
		}
		switch {
		case !pmore && !tmore:
			return true
		case !tmore:
			return prest == "#"
		case !pmore:
			return false
		}
		pattern, topic = prest, trest
	}
}

// topicsOverlap reports whether some topic matches both patterns.
func topicsOverlap(a, b string) bool {
	for {
		al, arest, amore := strings.Cut(a, "/")
		bl, brest, bmore := strings.Cut(b, "/")
		if al == "#" || bl == "#" {
			return true
		}
		if al != "+" && bl != "+" && al != bl {
			return false
		}
		switch {
		case !amore && !bmore:
			return true
		case !amore:
			return brest == "#"
		case !bmore:
			return arest == "#"
		}
		a, b = arest, brest
	}
}

// TopicOptions bound what topics cost a peer. Zero values take the
// defaults given.
type TopicOptions struct {
	// MaxLeasesPerTwin bounds the leases one subscriber twin holds on
	// this peer's topics. Default 64.
	MaxLeasesPerTwin int
	// MaxLeases bounds the leases of all subscribers. Default 10000.
	MaxLeases int
	// MaxLeaseBytes bounds the bytes of all leases (as stored in Redis).
	// Default 4 MiB.
	MaxLeaseBytes int64
	// MaxLease is the longest lease granted. Default 1h.
	MaxLease time.Duration
	// MinLease is the shortest lease granted. Default 2s.
	MinLease time.Duration
	// MaxSubscriptions bounds this peer's own subscriptions (local
	// clients). Default 1000.
	MaxSubscriptions int
	// EventBuffer is the channel size of a Go subscription; an event that
	// finds it full is dropped and counted. Default 1024.
	EventBuffer int
}

func (o TopicOptions) withDefaults() TopicOptions {
	if o.MaxLeasesPerTwin <= 0 {
		o.MaxLeasesPerTwin = 64
	}
	if o.MaxLeases <= 0 {
		o.MaxLeases = 10000
	}
	if o.MaxLeaseBytes <= 0 {
		o.MaxLeaseBytes = 4 << 20
	}
	if o.MaxLease <= 0 {
		o.MaxLease = time.Hour
	}
	if o.MinLease <= 0 {
		o.MinLease = 2 * time.Second
	}
	if o.MaxLease < o.MinLease {
		o.MaxLease = o.MinLease
	}
	if o.MaxSubscriptions <= 0 {
		o.MaxSubscriptions = 1000
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = 1024
	}
	return o
}

// DefaultLease is the lease asked for when none is given.
const DefaultLease = 300 * time.Second

// Wire payloads (JSON) of the built-in commands.
type (
	// subscribeMsg is the payload of CmdSubscribe, CmdRenew and
	// CmdUnsubscribe (lease and level unused there).
	subscribeMsg struct {
		Topic string `json:"topic"`
		Lease int64  `json:"lease,omitempty"` // seconds
		Level string `json:"level,omitempty"`
	}
	// subscribeAns answers CmdSubscribe and CmdRenew.
	subscribeAns struct {
		Topic   string `json:"topic"`
		Lease   int64  `json:"lease"`   // seconds granted
		Expires int64  `json:"expires"` // unix seconds
	}
	// unsubscribeAns answers CmdUnsubscribe.
	unsubscribeAns struct {
		Removed bool `json:"removed"`
	}
	// eventMsg is the payload of CmdEvent.
	eventMsg struct {
		Topic   string `json:"topic"`
		Data    []byte `json:"dat"` // base64 in JSON
		Confirm bool   `json:"confirm,omitempty"`
	}
)

func checkLevel(level string) (string, error) {
	switch level {
	case "", redisapi.LevelAtMostOnce:
		return redisapi.LevelAtMostOnce, nil
	case redisapi.LevelConfirmed:
		return level, nil
	}
	return "", fmt.Errorf("level must be %q or %q, not %s", redisapi.LevelAtMostOnce, redisapi.LevelConfirmed, quoteShort(level))
}

// Reasons for dropped topic messages.
const (
	dropTopicBad          = "topic_bad"
	dropTopicDenied       = "topic_denied"
	dropTopicUnsubscribed = "topic_unsubscribed"
	dropTopicBufferFull   = "topic_buffer_full"
	dropTopicQueueFull    = "topic_queue_full"
	dropLeaseTwin         = "lease_limit_twin"
	dropLeaseTotal        = "lease_limit_total"
	dropLeaseBytes        = "lease_limit_bytes"
)
