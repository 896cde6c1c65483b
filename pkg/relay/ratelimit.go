package relay

import (
	"errors"
	"sync"
	"time"
)

// RateLimit is a per-twin token bucket: a twin may send Messages envelopes
// and Bytes bytes per Window, with bursts up to those amounts. Over the
// limit, envelopes are dropped (requests get the "exceeded rate limits"
// error) and the connection stays.
type RateLimit struct {
	// Messages per Window; 0 means no message limit.
	Messages int
	// Bytes per Window; 0 means no byte limit.
	Bytes int64
	// Window is the refill period. Default one minute.
	Window time.Duration
}

// limiter holds one bucket per twin that sent recently.
type limiter struct {
	cfg RateLimit

	mu      sync.Mutex // guards buckets
	buckets map[uint32]*bucket
}

type bucket struct {
	msgs, bytes float64 // tokens left
	last        time.Time
}

func newLimiter(cfg RateLimit) (*limiter, error) {
	if cfg.Messages < 0 || cfg.Bytes < 0 {
		return nil, errors.New("relay: negative rate limit")
	}
	if cfg.Window <= 0 {
		cfg.Window = time.Minute
	}
	return &limiter{cfg: cfg, buckets: make(map[uint32]*bucket)}, nil
}

// allow takes one message of size bytes from twin's bucket, or reports that
// the bucket is too empty.
func (l *limiter) allow(twin uint32, size int, now time.Time) bool {
	if l.cfg.Messages == 0 && l.cfg.Bytes == 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[twin]
	if b == nil {
		b = &bucket{msgs: float64(l.cfg.Messages), bytes: float64(l.cfg.Bytes), last: now}
		l.buckets[twin] = b
	}
	if el := now.Sub(b.last); el > 0 {
		frac := float64(el) / float64(l.cfg.Window)
		b.msgs = min(float64(l.cfg.Messages), b.msgs+frac*float64(l.cfg.Messages))
		b.bytes = min(float64(l.cfg.Bytes), b.bytes+frac*float64(l.cfg.Bytes))
		b.last = now
	}
	if l.cfg.Messages > 0 && b.msgs < 1 {
		return false
	}
	if l.cfg.Bytes > 0 && b.bytes < float64(size) {
		return false
	}
	b.msgs--
	b.bytes -= float64(size)
	return true
}

// sweep forgets buckets that have refilled completely.
func (l *limiter) sweep(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for twin, b := range l.buckets {
		if now.Sub(b.last) >= l.cfg.Window {
			delete(l.buckets, twin)
		}
	}
}
