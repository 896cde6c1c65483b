package relay

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// broadcastSID is the destination connection that means "every session of
// the twin live now on this relay (all instances of a cluster)". No session
// may use it as its id.
const broadcastSID = "*"

// broadcastLocal gives a copy of m to every live session of twin here and
// returns how many took it (in their queue or the store). The fan-out is
// bounded by MaxSessionsPerTwin.
func (r *Relay) broadcastLocal(twin uint32, m Message) int {
	r.mu.Lock()
	live := make([]*session, 0, len(r.sessions[twin]))
	for _, s := range r.sessions[twin] {
		live = append(live, s)
	}
	r.mu.Unlock()
	n := 0
	for _, s := range live {
		if _, err := s.deliver(m); err != nil {
			r.storeError(err) // counted as a drop, by reason
			continue
		}
		n++
	}
	r.counters.broadcastCopies.Add(uint64(n))
	return n
}

// broadcast gives a copy of m to every live session of twin, on every
// instance of a cluster, and reports whether any session took one.
func (r *Relay) broadcast(twin uint32, m Message) bool {
	if r.cl != nil {
		return r.cl.broadcast(twin, m)
	}
	return r.broadcastLocal(twin, m) > 0
}

// routeBroadcast routes an envelope to connection "*": copies to the live
// sessions, or, when none is live, the path of an envelope to the twin's
// session without id (stored, fail-fast answered, or federated unchanged
// to the twin's relay).
func (r *Relay) routeBroadcast(ctx context.Context, rt *envelope.Routing, m Message) (routeResult, uint32, string) {
	dst := rt.Destination.Twin
	if r.broadcast(dst, m) {
		return routedBroadcast, 0, ""
	}
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	twin, err := r.opts.Directory.Twin(lctx, dst)
	cancel()
	switch {
	case errors.Is(err, registrar.ErrNotFound):
		r.counters.drop(dropUnknownTwin)
		return 0, envelope.CodeNotFound, msgUnknownTwin
	case err != nil:
		r.counters.drop(dropLookup)
		r.log.Warn("registrar lookup failed", "twin", dst, "err", err)
		return 0, envelope.CodeInternal, msgLookupFailed
	}
	if r.isOurs(twin.Relays) {
		if rt.FailFast() {
			r.counters.drop(dropOffline)
			return 0, envelope.CodeOffline, msgOffline
		}
		res, err := r.storeFor(SessionKey{Twin: dst}, m)
		if err != nil {
			return r.storeError(err)
		}
		return res, 0, ""
	}
	if len(twin.Relays) == 0 {
		r.counters.drop(dropOffline)
		return 0, envelope.CodeOffline, msgOffline
	}
	return r.federate(rt, m, twin.Relays)
}

// In a cluster, an instance holding at least one session of a twin is
// subscribed to the twin's broadcast subject <base>.b.<twin>. A broadcast
// is a NATS request on it: each holder gives copies to its sessions and
// answers how many (an instance whose sessions all left meanwhile does not
// answer). No responders: no session of the twin is live anywhere.

func (c *cluster) broadcastSubject(twin uint32) string {
	return strings.TrimSuffix(c.prefix, "s.") + "b." + strconv.FormatUint(uint64(twin), 10)
}

// subscribeTwin makes this instance take the broadcasts of twin; r.mu is
// held (the first session of twin registers).
func (c *cluster) subscribeTwin(twin uint32) {
	sub, err := c.nc.ChanSubscribe(c.broadcastSubject(twin), c.in)
	if err != nil {
		c.r.log.Warn("NATS subscribe failed", "twin", twin, "err", err)
		return
	}
	c.mu.Lock()
	c.twinSubs[twin] = sub
	c.mu.Unlock()
}

// unsubscribeTwin ends it; r.mu is held (the last session of twin left).
func (c *cluster) unsubscribeTwin(twin uint32) {
	c.mu.Lock()
	sub := c.twinSubs[twin]
	delete(c.twinSubs, twin)
	c.mu.Unlock()
	if sub != nil {
		sub.Unsubscribe()
	}
}

// broadcast sends m to the twin's broadcast subject and reports whether
// an instance took it. A request that times out (holders that all lost
// their sessions meanwhile, or NATS trouble) counts as taken by nobody:
// the envelope is then stored for the twin's session without id.
func (c *cluster) broadcast(twin uint32, m Message) bool {
	msg := nats.NewMsg(c.broadcastSubject(twin))
	msg.Header.Set(hdrDeadline, strconv.FormatInt(m.Deadline.UnixNano(), 10))
	msg.Data = m.Data
	_, err := c.nc.RequestMsg(msg, clusterRequestTimeout)
	switch {
	case err == nil:
		return true
	case errors.Is(err, nats.ErrNoResponders):
		c.counts[clusterNobody].Add(1)
	default:
		c.counts[clusterTimeout].Add(1)
		c.r.log.Warn("cluster broadcast not confirmed", "twin", twin, "err", err)
	}
	return false
}

// handleBroadcast gives copies of a broadcast to the sessions here.
func (c *cluster) handleBroadcast(twin uint32, msg *nats.Msg) {
	ns, err := strconv.ParseInt(msg.Header.Get(hdrDeadline), 10, 64)
	if err != nil {
		return
	}
	if n := c.r.broadcastLocal(twin, Message{Data: msg.Data, Deadline: time.Unix(0, ns)}); n > 0 {
		msg.Respond([]byte(strconv.Itoa(n)))
	}
}

// parseBroadcast returns the twin of a broadcast subject.
func (c *cluster) parseBroadcast(subj string) (uint32, bool) {
	rest, ok := strings.CutPrefix(subj, strings.TrimSuffix(c.prefix, "s.")+"b.")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 10, 32)
	return uint32(n), err == nil
}
