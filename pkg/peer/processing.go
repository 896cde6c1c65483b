package peer

import (
	"context"
	"sync"
	"time"
)

// Entries nobody holds.
//
// popLoop moves each message to a processing list and removes it once
// handled. When Redis moved a message but its reply was lost (the
// connection dropped, Redis restarted after the move with AOF), the
// message sits in the processing list and no worker has it. popLoop finds
// such entries by scanning the list: every scanInterval, at once after a
// Redis error, and again confirmDelay after a scan that saw an unheld
// entry. An entry is taken only when two consecutive scans saw it unheld,
// so a move whose reply is still on its way is never taken for lost. The
// first scan of a run takes everything: nothing of this run can be in
// flight yet. This relies on one peer process per Redis database: the
// entries another process holds look unheld to this one.

const (
	// scanInterval is how often popLoop looks for processing-list
	// entries no worker holds.
	scanInterval = 2 * time.Second
	// confirmDelay is how soon a scan that saw unheld entries is
	// followed by the one that takes them.
	confirmDelay = time.Second
)

// holds counts, by exact raw value, the entries of one processing list
// this process is responsible for: from the reply of the move that put an
// entry there until its LREM was sent (or given up), or its handler
// returned without finishing it. Identical raw messages are distinct
// entries, hence the counts.
type holds struct {
	mu sync.Mutex
	n  map[string]int
}

func newHolds() *holds { return &holds{n: make(map[string]int)} }

func (h *holds) add(raws ...string) {
	h.mu.Lock()
	for _, raw := range raws {
		h.n[raw]++
	}
	h.mu.Unlock()
}

func (h *holds) release(raw string) {
	h.mu.Lock()
	if h.n[raw] <= 1 {
		delete(h.n, raw)
	} else {
		h.n[raw]--
	}
	h.mu.Unlock()
}

// count is how many entries are held in all.
func (h *holds) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, c := range h.n {
		n += c
	}
	return n
}

func (h *holds) snapshot() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int, len(h.n))
	for raw, c := range h.n {
		out[raw] = c
	}
	return out
}

// release gives up the hold of this process on raw in processing without
// removing it from the list.
func (p *Peer) release(processing, raw string) {
	if h := p.held[processing]; h != nil {
		h.release(raw)
	}
}

// scanner finds the entries of one processing list no worker holds. It
// belongs to popLoop's goroutine, the only one that adds holds.
type scanner struct {
	processing string
	held       *holds
	first      bool           // no scan done yet in this run
	unheld     map[string]int // seen unheld by the last scan, not taken
	next       time.Time      // when to scan next
}

// due reports whether a scan should run now.
func (s *scanner) due(now time.Time) bool { return s.first || !now.Before(s.next) }

// soon makes the next scan come at once (after a Redis error).
func (s *scanner) soon() { s.next = time.Time{} }

// scan reads the processing list and returns, oldest first and now held,
// the entries to handle: on the first scan all of them, later those that
// this scan and the previous one both saw unheld.
func (p *Peer) scan(ctx context.Context, s *scanner) ([]string, error) {
	// Holds are read before the list: a hold released in between belongs
	// to an entry whose LREM already ran, so it is not in the list; the
	// error is on the side of taking too little, never too much.
	held := s.held.snapshot()
	list, err := p.rdb.LRange(ctx, s.processing, 0, -1).Result()
	if err != nil {
		return nil, err
	}
	unheld := make(map[string]int)
	for _, raw := range list {
		unheld[raw]++
	}
	for raw, n := range unheld {
		if n -= held[raw]; n > 0 {
			unheld[raw] = n
		} else {
			delete(unheld, raw)
		}
	}
	quota := make(map[string]int, len(unheld))
	for raw, n := range unheld {
		if !s.first {
			n = min(n, s.unheld[raw])
		}
		if n > 0 {
			quota[raw] = n
		}
	}
	var take []string
	// Oldest first: the processing list is pushed on the left.
	for i := len(list) - 1; i >= 0; i-- {
		raw := list[i]
		if quota[raw] > 0 {
			quota[raw]--
			take = append(take, raw)
			if unheld[raw]--; unheld[raw] == 0 {
				delete(unheld, raw)
			}
		}
	}
	s.held.add(take...)
	s.first = false
	s.unheld = unheld
	if len(unheld) > 0 {
		s.next = time.Now().Add(confirmDelay)
	} else {
		s.next = time.Now().Add(scanInterval)
	}
	return take, nil
}
