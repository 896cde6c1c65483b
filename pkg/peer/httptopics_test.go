package peer_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/peer"
)

// A local program without Redis publishes, subscribes, reads events and
// unsubscribes through the HTTP API; bad input gets 400 and the bound on
// held subscriptions 429.
func TestHTTPTopics(t *testing.T) {
	s := newStack(t, 1)
	owner, sub := s.newPeer(), s.newPeer()
	pub := startHTTP(t, owner, nil)
	cl := startHTTP(t, sub, &peer.HTTPOptions{MaxSubscriptions: 1})

	body := fmt.Sprintf(`{"op":"subscribe","twin":%d,"topic":"alerts/+"}`, owner.Twin())
	if code, out := do(t, cl, "POST", "/topics", body); code != 200 || !strings.Contains(out, `"lease":300`) {
		t.Fatalf("subscribe: %d %s", code, out)
	}
	waitFor(t, 20*time.Second, func() error {
		if l := owner.Leases(); len(l) != 1 {
			return fmt.Errorf("leases %v", l)
		}
		return nil
	})
	code, out := do(t, pub, "POST", "/topics", `{"op":"publish","topic":"alerts/disk","dat":"`+b64("97%")+`"}`)
	if code != 200 || !strings.Contains(out, `"sent":1`) {
		t.Fatalf("publish: %d %s", code, out)
	}
	events := fmt.Sprintf("/events?twin=%d&topic=alerts/%%2B&wait=30", owner.Twin())
	code, out = do(t, cl, "GET", events, "")
	if code != 200 {
		t.Fatalf("events: %d %s", code, out)
	}
	var ev map[string]any
	if err := json.Unmarshal([]byte(out), &ev); err != nil {
		t.Fatal(err)
	}
	if ev["topic"] != "alerts/disk" || unb64(t, ev["dat"]) != "97%" || ev["pattern"] != "alerts/+" {
		t.Fatalf("event %v", ev)
	}
	if code, out := do(t, cl, "GET", fmt.Sprintf("/events?twin=%d&topic=alerts/%%2B&wait=0", owner.Twin()), ""); code != 204 {
		t.Fatalf("events with none waiting: %d %s, want 204", code, out)
	}

	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/topics", `{"op":"subscribe","twin":0,"topic":"a"}`},     // no owner
		{"POST", "/topics", `{"op":"publish","topic":"a/#","dat":""}`},     // wildcard published
		{"POST", "/topics", `{"op":"publish","topic":"a","dat":"!"}`},      // not base64
		{"POST", "/topics", `{"op":"dance","topic":"a"}`},                  // unknown op
		{"POST", "/topics", `{"op":"subscribe","twin":5,"topic":"a/#/b"}`}, // bad pattern
		{"POST", "/topics", `not json`},
		{"GET", "/events?twin=x&topic=a", ""},
		{"GET", fmt.Sprintf("/events?twin=%d&topic=a&wait=-1", owner.Twin()), ""},
	} {
		if code, out := do(t, cl, tc.method, tc.path, tc.body); code != 400 {
			t.Errorf("%s %s %s: %d %s, want 400", tc.method, tc.path, tc.body, code, out)
		}
	}
	if code, _ := do(t, cl, "GET", fmt.Sprintf("/events?twin=%d&topic=other", owner.Twin()), ""); code != 404 {
		t.Errorf("events of no subscription: %d, want 404", code)
	}
	if code, out := do(t, cl, "POST", "/topics", fmt.Sprintf(`{"op":"subscribe","twin":%d,"topic":"more"}`, owner.Twin())); code != 429 {
		t.Errorf("a second held subscription at MaxSubscriptions 1: %d %s, want 429", code, out)
	}

	code, out = do(t, cl, "POST", "/topics", fmt.Sprintf(`{"op":"unsubscribe","twin":%d,"topic":"alerts/+"}`, owner.Twin()))
	if code != 200 || !strings.Contains(out, `"removed":true`) {
		t.Fatalf("unsubscribe: %d %s", code, out)
	}
	waitFor(t, 20*time.Second, func() error {
		if l := owner.Leases(); len(l) != 0 {
			return fmt.Errorf("leases %v after unsubscribe", l)
		}
		return nil
	})
	if code, _ := do(t, cl, "GET", events, ""); code != 404 {
		t.Errorf("events after unsubscribe: %d, want 404", code)
	}
}
