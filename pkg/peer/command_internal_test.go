package peer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

func TestCheckCommand(t *testing.T) {
	for _, ok := range []string{"calc.add", "rmb.version", "zos.deployment.get", "a/b/c", "v2:add", "x_y-z+w@h", "systems", "replyto.x", strings.Repeat("a", MaxCommandLen)} {
		if err := CheckCommand(ok); err != nil {
			t.Errorf("CheckCommand(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "a\nb", "a\"b", "a*", "a?", "é", "\xff", strings.Repeat("a", MaxCommandLen+1)} {
		if err := CheckCommand(bad); !errors.Is(err, ErrBadCommand) {
			t.Errorf("CheckCommand(%q) = %v, want ErrBadCommand", bad, err)
		}
	}
	for _, res := range []string{"system", "system.local", "system.reply", "system.deadletter", "reply", "reply.0b3e", "reply.x.y"} {
		if err := CheckCommand(res); !errors.Is(err, ErrReservedCommand) {
			t.Errorf("CheckCommand(%q) = %v, want ErrReservedCommand", res, err)
		}
	}
	// The error never quotes a long name whole.
	if err := CheckCommand(strings.Repeat("x", 10000)); strings.Contains(err.Error(), "xxxxxxxx") {
		t.Errorf("error quotes the long name: %.80s", err)
	}
}

func TestMatchGlob(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"*", "calc.add", true},
		{"*", "a/b.c", true},
		{"*", "", true},
		{"calc.*", "calc.add", true},
		{"calc.*", "calc.v2/add", true},
		{"calc.*", "calc.", true},
		{"calc.*", "calc", false},
		{"calc.*", "xcalc.add", false},
		{"*.add", "calc/v2.add", true},
		{"*.add", "calc.added", false},
		{"a*b*c", "a/x.b/y.c", true},
		{"a*b*c", "acb", false},
		{"?", "/", true},
		{"?", "ab", false},
		{"calc.?dd", "calc.add", true},
		{"rmb.version", "rmb.version", true},
		{"rmb.version", "rmb.versions", false},
		{"**", "x.y/z", true},
		{"*a", strings.Repeat("b", 1000), false},
	}
	for _, tt := range tests {
		if got := matchGlob(tt.pattern, tt.name); got != tt.want {
			t.Errorf("matchGlob(%q, %q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
	for _, bad := range []string{"", "[ab]", "a\\*", "x]"} {
		if err := checkGlob(bad); err == nil {
			t.Errorf("checkGlob(%q): no error", bad)
		}
	}
}

// TestAnswerCacheBound: the signed answers kept for re-sent requests stay
// within MaxAnswerCacheBytes; an answer that does not fit is not kept and
// its request is forgotten, so a re-send is handled again; sweeping
// frees the bytes.
func TestAnswerCacheBound(t *testing.T) {
	m, _ := identity.NewMnemonic()
	id, err := identity.FromSecret(m, identity.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(&Options{Identity: id, Relays: []string{"ws://127.0.0.1:1"}, Registrar: nopRegistrar{}, MaxAnswerCacheBytes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	src := address{twin: 9}
	deadline := time.Now().Add(time.Minute)
	answer := make([]byte, 400)
	for i, uid := range []string{"a", "b", "c"} {
		if dup, _ := p.checkSeen(newSeenKey(uid, src, envelope.KindRequest), deadline); dup {
			t.Fatalf("%s seen before", uid)
		}
		if _, ok := p.rememberAnswer(uid, src, answer); !ok {
			t.Fatalf("%d: request not remembered", i)
		}
	}
	if p.answerBytes != 800 || len(p.answers) != 2 {
		t.Fatalf("cache holds %d answers, %d bytes; want 2, 800", len(p.answers), p.answerBytes)
	}
	// a is answered from the cache; c, whose answer did not fit, is new again.
	if dup, cached := p.checkSeen(newSeenKey("a", src, envelope.KindRequest), deadline); !dup || cached == nil {
		t.Errorf("re-sent a: dup %v, cached %d bytes", dup, len(cached))
	}
	if dup, _ := p.checkSeen(newSeenKey("c", src, envelope.KindRequest), deadline); dup {
		t.Error("re-sent c, whose answer was not kept, is taken for a duplicate and would go unanswered")
	}
	if got := testutilCounter(p, dropAnswerCache); got != 1 {
		t.Errorf("answer_cache_full counted %v times, want 1", got)
	}
	p.sweepSeen(deadline.Add((seenGrace + 2) * time.Second))
	if p.answerBytes != 0 || len(p.answers) != 0 {
		t.Errorf("after the sweep: %d answers, %d bytes", len(p.answers), p.answerBytes)
	}
}

// nopRegistrar satisfies Registrar for peers that never run.
type nopRegistrar struct{}

func (nopRegistrar) Twin(context.Context, uint32) (*registrar.Twin, error) {
	return nil, registrar.ErrNotFound
}
func (nopRegistrar) TwinByPublicKey(context.Context, []byte) (*registrar.Twin, error) {
	return nil, registrar.ErrNotFound
}
func (nopRegistrar) Register(context.Context, *identity.Identity, []string) (*registrar.Twin, error) {
	return nil, registrar.ErrNotFound
}
func (nopRegistrar) Update(context.Context, *identity.Identity, uint32, []string, []byte) (*registrar.Twin, error) {
	return nil, registrar.ErrNotFound
}

// testutilCounter reads rmb_peer_dropped_total{reason}.
func testutilCounter(p *Peer, reason string) float64 {
	var m dto.Metric
	p.metrics.dropped.WithLabelValues(reason).Write(&m)
	return m.GetCounter().GetValue()
}
