package relay

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// logSink is a log buffer safe for concurrent writes.
type logSink struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A twin that lists localhost:PORT while the relay's domain is
// 127.0.0.1:PORT: the relay warns, learns that the name is its own, and
// stores envelopes for the twin while it is offline instead of federating
// them to itself. A twin that lists an unrelated relay is warned about
// once per interval, however often it connects.
func TestDomainMismatch(t *testing.T) {
	reg := startRegistrar(t)
	ln, addr := listen(t)
	_, port, _ := net.SplitHostPort(addr)
	var logs logSink
	tr := startRelay(t, reg, &Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))}, ln, nil)
	a := reg.newTwin(t, addr)
	b := reg.newTwin(t, "localhost:"+port)
	c := reg.newTwin(t, "relay.elsewhere.example:443")
	count := func(res string) float64 { return testutil.ToFloat64(tr.domainCheck.results.WithLabelValues(res)) }

	cb := dial(t, tr, b, "")
	waitFor(t, 20*time.Second, func() error {
		if !strings.Contains(logs.String(), "treating the name as this relay's") || !strings.Contains(logs.String(), "name=localhost:"+port) {
			return errors.New("no warning about localhost yet")
		}
		return nil
	})
	if count("alias") != 1 || !tr.isOurs([]string{"LOCALHOST:" + port}) {
		t.Errorf("alias not learnt: %v", count("alias"))
	}
	// b goes offline; a request for it is kept here and delivered when b
	// is back, not federated.
	cb.c.CloseNow()
	waitSession(t, tr.Relay, SessionKey{Twin: b.num}, false)
	ca := dial(t, tr, a, "")
	ca.send(b.num, "", "while you were away")
	cb = dial(t, tr, b, "")
	cb.expectPayload("while you were away")
	if n := dropped(tr.Relay, dropFedAddress) + dropped(tr.Relay, dropUnknownTwin); n != 0 {
		t.Errorf("%d envelopes dropped on the way to ourselves", n)
	}

	dial(t, tr, c, "s1")
	waitFor(t, 20*time.Second, func() error {
		if !strings.Contains(logs.String(), "lists none of this relay's domains") {
			return errors.New("no warning about relay.elsewhere.example yet")
		}
		return nil
	})
	dial(t, tr, c, "s2")
	waitFor(t, 20*time.Second, func() error {
		if count("suppressed") != 1 {
			return errors.New("second connection not counted as suppressed")
		}
		return nil
	})
	if n := strings.Count(logs.String(), "lists none of this relay's domains"); n != 1 || count("foreign") != 1 {
		t.Errorf("warned %d times about twin %d, want once:\n%s", n, c.num, logs.String())
	}
	if tr.isOurs([]string{"relay.elsewhere.example:443"}) {
		t.Error("an unrelated relay became ours")
	}
}

// The bounds: warned twins and aliases.
func TestDomainCheckBounds(t *testing.T) {
	d := &domainCheck{warned: map[uint32]time.Time{}}
	d.aliases.Store(&map[string]bool{})
	now := time.Now()
	for i := range maxDomainWarned {
		if !d.shouldWarn(uint32(i+1), now) {
			t.Fatalf("twin %d not warned", i+1)
		}
	}
	if d.shouldWarn(maxDomainWarned+1, now) || len(d.warned) != maxDomainWarned {
		t.Errorf("full map took another twin: %d", len(d.warned))
	}
	if !d.shouldWarn(maxDomainWarned+1, now.Add(domainWarnInterval)) || len(d.warned) != 1 {
		t.Errorf("expired entries not swept: %d", len(d.warned))
	}
	for i := range maxDomainAliases + 5 {
		d.addAlias(strings.Repeat("x", i+1) + ":1")
	}
	if n := len(*d.aliases.Load()); n != maxDomainAliases {
		t.Errorf("%d aliases, bound %d", n, maxDomainAliases)
	}
}

// A twin that never connected here lists localhost:PORT: the first
// federation attempt to it finds that the name is this relay, and later
// envelopes for the twin are kept here for it.
func TestFederationToOurselves(t *testing.T) {
	reg := startRegistrar(t)
	ln, addr := listen(t)
	_, port, _ := net.SplitHostPort(addr)
	var logs logSink
	tr := startRelay(t, reg, &Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))}, ln, nil)
	a := reg.newTwin(t, addr)
	d := reg.newTwin(t, "localhost:"+port)
	ca := dial(t, tr, a, "")
	ca.send(d.num, "", "first")
	waitFor(t, 20*time.Second, func() error {
		if !strings.Contains(logs.String(), "federation to a destination's relay would reach this relay itself") {
			return errors.New("no warning yet")
		}
		return nil
	})
	ca.send(d.num, "", "second")
	cd := dial(t, tr, d, "")
	for {
		e, err := cd.recvWithin(20 * time.Second)
		if err != nil {
			t.Fatalf("twin %d never got the envelope sent after the name was learnt: %v\n%s", d.num, err, logs.String())
		}
		if string(e.GetPlain()) == "second" {
			break
		}
	}
}
