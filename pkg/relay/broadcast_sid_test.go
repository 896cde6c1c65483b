package relay

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// A token may not claim session id "*": it addresses every session of a
// twin, so no connection may hold it.
func TestBroadcastSessionIDRefused(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	tr := startRelay(t, reg, nil, ln, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, tr.wsURL()+"?"+token(t, a, "*"), nil)
	if err == nil {
		c.CloseNow()
		t.Fatal("a session with id \"*\" was let in")
	}
	if resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("dial with session id \"*\": %v %v, want 400", resp, err)
	}
	if tr.lookup(SessionKey{a.num, "*"}) != nil {
		t.Fatal("session \"*\" registered")
	}
}
