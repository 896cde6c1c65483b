package peer

import (
	"context"
	"time"
)

// Re-sending unanswered requests.
//
// A request or its answer can be lost on the way without this peer's
// connection dropping: a relay further on dies (kill -9 of the receiving
// relay in a federation), or the receiving peer dies after reading the
// request. The receiver suppresses duplicates by (source, uid) and answers
// a duplicate from its answer cache, or not at all while its service is
// still working on the first copy (the answer then comes when it is
// done). So sending the same signed envelope again is safe, and the
// resender does it, with the same uid:
//
//   - unanswered: when a destination has not answered after a quarter of
//     the request's lifetime, then after half and three quarters of it
//     (at most maxResends times per request);
//   - connection_lost: every unanswered request, at once, when a relay
//     connection drops (that relay may have dropped them or their
//     answers);
//   - restart: every request loaded from PendingHash at start, once a
//     relay is connected (the answer may have been read by the process
//     that died, or written by the relay to a socket nobody read).
//
// rmb_peer_resent_total counts them by reason. A request with a relay
// error not yet attributed to a destination (complete) is not re-sent: a
// second error from the relay for the copy would be taken for another
// destination's.

// maxResends bounds the timed re-sends of one request.
const maxResends = 3

// Reasons for re-sends.
const (
	resendUnanswered = "unanswered"
	resendConnLost   = "connection_lost"
	resendRestart    = "restart"
)

// nextResend is when the next timed re-send of pd is due: after each
// further (maxResends+1)th of its lifetime. It is at or past the deadline
// when no re-send is left.
func (pd *pending) nextResend() time.Time {
	if pd.resends >= maxResends {
		return pd.deadline
	}
	step := pd.deadline.Sub(pd.sent) / (maxResends + 1)
	return pd.sent.Add(step * time.Duration(pd.resends+1))
}

// resendItem is one envelope to send again.
type resendItem struct {
	uid      string
	dst      uint32
	b        []byte
	deadline time.Time
	reason   string
}

// dueResends returns the envelopes to send again now, and books them:
// all unanswered ones when all is set (a connection dropped), else those
// loaded at start and those whose timed re-send is due.
func (p *Peer) dueResends(now time.Time, all bool) []resendItem {
	var items []resendItem
	p.pendMu.Lock()
	defer p.pendMu.Unlock()
	for _, pd := range p.pending {
		if !now.Before(pd.deadline) || len(pd.relayErrs) > 0 {
			continue
		}
		var reason string
		switch {
		case all:
			reason = resendConnLost
		case pd.reloaded:
			reason = resendRestart
		case !now.Before(pd.resendAt) && pd.resends < maxResends:
			reason = resendUnanswered
			pd.resends++
			pd.resendAt = pd.nextResend()
		default:
			continue
		}
		pd.reloaded = false
		for d, b := range pd.waiting {
			if b != nil {
				items = append(items, resendItem{pd.uid, d, b, pd.deadline, reason})
				pd.resent = true
			}
		}
	}
	return items
}

// resender sends unanswered requests again (see above). It wakes when a
// relay connection was lost and every SweepInterval.
func (p *Peer) resender(ctx context.Context) {
	t := time.NewTicker(p.opts.SweepInterval)
	defer t.Stop()
	for {
		all := false
		select {
		case <-ctx.Done():
			return
		case <-p.resendReq:
			all = true
		case <-t.C:
		}
		items := p.dueResends(time.Now(), all)
		n := 0
		for _, it := range items {
			p.pendMu.Lock()
			pd := p.pending[it.uid]
			still := pd != nil && pd.waiting[it.dst] != nil
			p.pendMu.Unlock()
			if !still {
				continue
			}
			// Waits for a connection while none is up.
			if err := p.send(ctx, it.b, it.deadline); err != nil {
				if ctx.Err() != nil {
					return
				}
				continue // the sweeper reports the timeout
			}
			p.metrics.resent.WithLabelValues(it.reason).Inc()
			n++
		}
		if n > 0 {
			p.log.Info("re-sent unanswered requests", "count", n, "first_reason", items[0].reason)
		}
	}
}
