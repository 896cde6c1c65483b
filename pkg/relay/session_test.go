package relay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/wsframe"
	"github.com/rmb-go/rmb/pkg/envelope"
)

// gatedStore is a MemStore whose next Pop, once armed, reports that it
// started and then waits to be released.
type gatedStore struct {
	*MemStore
	mu      sync.Mutex
	entered chan struct{} // closed by the gated Pop as it starts
	release chan struct{} // closed by the test to let it finish
}

func (g *gatedStore) arm() (entered, release chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.entered, g.release = make(chan struct{}), make(chan struct{})
	return g.entered, g.release
}

func (g *gatedStore) Pop(ctx context.Context, k SessionKey, n int, now time.Time) ([]Message, int, error) {
	g.mu.Lock()
	entered, release := g.entered, g.release
	g.entered, g.release = nil, nil
	g.mu.Unlock()
	if entered != nil {
		close(entered)
		<-release
	}
	return g.MemStore.Pop(ctx, k, n, now)
}

// TestDeliverDuringStoreCheck: the first envelope for a live session
// makes its send queue. When that happens while sendLoop is asking the
// (empty) store whether anything waits, for a wake-up that came before
// the queue existed, sendLoop must still write what the new queue holds.
// It used to keep looking at the queue it had before (none), found the
// store empty and the queue not, and asked the store again, forever:
// everything delivered to the session afterwards sat in its queue.
func TestDeliverDuringStoreCheck(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	store := &gatedStore{MemStore: NewMemStore(nil)}
	tr := startRelay(t, reg, &Options{Store: store}, ln, nil)
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "")
	kb := SessionKey{b.num, ""}
	waitSession(t, tr.Relay, kb, true)
	s := tr.lookup(kb)
	// Let the drain that follows the connection finish first.
	waitFor(t, 20*time.Second, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.spilled {
			return errSpilled
		}
		return nil
	})

	entered, release := store.arm()
	s.wake() // as storeFor does for a session that connected meanwhile
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the wake-up did not make sendLoop look at the store")
	}
	ca.send(b.num, "", "first")
	waitFor(t, 20*time.Second, func() error {
		if s.queued() != 1 {
			return errNotQueued
		}
		return nil
	})
	close(release)
	cb.expectPayload("first")
	ca.send(b.num, "", "second")
	cb.expectPayload("second")
}

type testError string

func (e testError) Error() string { return string(e) }

const (
	errSpilled   = testError("session still spilled")
	errNotQueued = testError("envelope not in the send queue")
)

// A session that never reads holds at most SendQueueBytes in its send
// queue, however many envelopes the queue's count would take: the rest
// goes to the store.
func TestSendQueueBytes(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	slow := reg.newTwin(t, domain)
	const limit = 256 << 10
	tr := startRelay(t, reg, &Options{SendQueueSize: 10000, SendQueueBytes: limit, WriteTimeout: time.Hour, PingInterval: time.Hour}, ln, nil)
	ca := dial(t, tr, a, "")
	dialSilent(t, tr, slow, "") // never reads
	key := SessionKey{slow.num, ""}
	waitSession(t, tr.Relay, key, true)
	big := strings.Repeat("z", 64<<10)
	for i := 0; tr.counters.stored.Load() < 10; i++ {
		if i > 2000 {
			t.Fatal("nothing spilled to the store: the send queue is not bounded in bytes")
		}
		ca.send(slow.num, "", big)
	}
	s := tr.lookup(key)
	s.mu.Lock()
	queued, bytes := len(s.send), s.sendBytes
	s.mu.Unlock()
	if bytes > limit || queued > limit/(64<<10) {
		t.Errorf("send queue holds %d envelopes, %d bytes; bound %d bytes", queued, bytes, limit)
	}
}

// TestIdleSessionHasNoSendLoop: a session with nothing to send has no send
// loop, and soon no send queue and no write bookkeeping; a delivery is
// written without one, a wake-up for the store starts one again, and a
// session that ends without one still finishes (its sendDone closes).
func TestIdleSessionHasNoSendLoop(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	// pingCheck, which drops what an idle session no longer uses, runs
	// every PingInterval/2.
	tr := startRelay(t, reg, &Options{PingInterval: time.Second, PingTimeout: time.Second}, ln, nil)
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "")
	kb := SessionKey{b.num, ""}
	waitSession(t, tr.Relay, kb, true)
	s := tr.lookup(kb)
	stopped := func() {
		t.Helper()
		waitFor(t, 20*time.Second, func() error {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.sender != senderStopped || s.send != nil || s.unflushed != nil {
				return testError("send loop still running")
			}
			return nil
		})
	}
	stopped()
	ca.send(b.num, "", "one")
	cb.expectPayload("one")
	stopped()
	ca.send(b.num, "", "two")
	cb.expectPayload("two")
	stopped()

	// Something in the store: the wake-up that storeFor sends starts a loop.
	e := request(t, a, "", b.num, "", "three", 60)
	if _, err := tr.storeFor(kb, Message{Data: marshal(t, e), Deadline: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	cb.expectPayload("three")
	stopped()

	cb.c.CloseNow()
	select {
	case <-s.sendDone:
	case <-time.After(20 * time.Second):
		t.Fatal("a session without a send loop did not finish")
	}
	if !s.isClosed() {
		t.Fatal("finished session not closed")
	}
}

// A client that stops reading fills its socket. The sender's reader, which
// wrote the first envelopes itself, leaves the rest to a send loop and then
// the store, and goes on routing to others without waiting. Once the
// client reads again it gets every envelope, in order.
func TestSlowReaderDoesNotStallSender(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	slow := reg.newTwin(t, domain)
	fast := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{SendQueueSize: 16, WriteTimeout: time.Hour, PingInterval: time.Hour}, ln, nil)
	ca := dial(t, tr, a, "")
	cs := dialSilent(t, tr, slow, "") // reads nothing until the end
	cf := dial(t, tr, fast, "")
	waitSession(t, tr.Relay, SessionKey{slow.num, ""}, true)
	waitSession(t, tr.Relay, SessionKey{fast.num, ""}, true)
	pad := strings.Repeat("x", 3000) // under nowMax: written by the reader while it can
	n := 0
	for ; tr.counters.stored.Load() == 0; n++ {
		if n > 50000 {
			t.Fatal("nothing reached the store: the silent client's socket never filled")
		}
		ca.send(slow.num, "", fmt.Sprintf("%06d%s", n, pad))
		ca.send(fast.num, "", strconv.Itoa(n))
		cf.expectPayload(strconv.Itoa(n)) // a's reader did not wait for slow
	}
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, b, err := cs.c.Read(ctx)
		cancel()
		if err != nil {
			t.Fatalf("envelope %d of %d: %v", i, n, err)
		}
		e, err := envelope.Unmarshal(b, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := string(e.GetPlain()), fmt.Sprintf("%06d", i); !strings.HasPrefix(got, want) {
			t.Fatalf("envelope %d of %d: got %.6s", i, n, got)
		}
	}
}

// An envelope written directly to a session whose close frame went out
// already is not counted as sent: it goes back to the store, and the next
// connection gets it.
func TestDirectWriteAfterCloseGoesToStore(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{PingInterval: time.Hour}, ln, nil)
	kb := SessionKey{b.num, ""}
	dialSilent(t, tr, b, "") // does not answer the close: it takes closeGrace
	waitSession(t, tr.Relay, kb, true)
	s := tr.lookup(kb)
	s.close(statusReplaced, "test")
	waitFor(t, 20*time.Second, func() error {
		if err := s.conn.Ping(); !errors.Is(err, wsframe.ErrClosed) {
			return fmt.Errorf("close frame not sent yet (ping: %v)", err)
		}
		return nil
	})
	if s.isClosed() {
		t.Fatal("session finished before the test could write to it")
	}
	e := request(t, a, "", b.num, "", "late", 60)
	if _, err := s.deliver(Message{Data: marshal(t, e), Deadline: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.sendDone:
	case <-time.After(20 * time.Second):
		t.Fatal("session did not finish")
	}
	waitSession(t, tr.Relay, kb, false)
	cb := dial(t, tr, b, "")
	cb.expectPayload("late")
}
