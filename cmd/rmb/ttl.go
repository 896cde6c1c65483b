package main

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
)

// ttlFlag is a time to live: plain seconds (--ttl 30), as the relay's
// flags take them, or a Go duration (--ttl 90s). The protocol counts whole
// seconds from 1 to envelope.MaxTTL; check enforces that.
type ttlFlag struct {
	d   time.Duration
	set bool
}

func (t *ttlFlag) String() string {
	if t == nil {
		return ""
	}
	return t.d.String()
}

func (t *ttlFlag) Set(v string) error {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 || n > math.MaxInt32 {
			return fmt.Errorf("%s is out of range: %s", v, ttlRange())
		}
		t.d, t.set = time.Duration(n)*time.Second, true
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("want seconds (30) or a duration (90s), got %q", v)
	}
	if d < 0 {
		return fmt.Errorf("%s is negative: %s", v, ttlRange())
	}
	t.d, t.set = d, true
	return nil
}

func ttlRange() string {
	return fmt.Sprintf("allowed 1 to %d seconds (1s to %s)", envelope.MaxTTL, time.Duration(envelope.MaxTTL)*time.Second)
}

// check returns the TTL in whole seconds, rounded up (the envelope carries
// seconds; the caller's wait must match what it sent), and a note when it
// rounded. Below one second or above envelope.MaxTTL is an error naming
// flag: exp 0 would mean the default of 300 s to the peer.
func (t *ttlFlag) check(flag string) (secs int64, note string, err error) {
	if t.d < time.Second {
		return 0, "", fmt.Errorf("--%s %s is below one second: %s", flag, t.d, ttlRange())
	}
	if t.d > time.Duration(envelope.MaxTTL)*time.Second {
		return 0, "", fmt.Errorf("--%s %s is above the protocol's maximum: %s", flag, t.d, ttlRange())
	}
	secs = int64((t.d + time.Second - 1) / time.Second)
	if time.Duration(secs)*time.Second != t.d {
		note = fmt.Sprintf("--%s %s rounded up to %ds: the protocol counts whole seconds", flag, t.d, secs)
	}
	return secs, note, nil
}
