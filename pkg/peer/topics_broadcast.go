package peer

import (
	"context"
	"errors"
)

// Broadcast.
//
// A destination address whose connection is BroadcastSession means every
// live session of the twin: a relay that knows it delivers one copy to
// each session connected to it (docs/protocol.md, "Broadcast"). A peer
// accepts such envelopes as addressed to itself (it checks the twin, not
// the connection) and answers as it would any request. Through Redis, a
// client broadcasts with "con": "*" in its msgbus.system.local request.

// BroadcastSession is the destination connection meaning every session.
const BroadcastSession = "*"

// Broadcast sends cmd to every live session of twin and waits as Call
// does. Every session answers with the request's uid and the same source
// twin, so the first answer is returned and the others are dropped
// (counted as late_response); use topics for events that need no answer
// or one per subscriber.
func (p *Peer) Broadcast(ctx context.Context, twin uint32, cmd string, data []byte, opts *CallOptions) ([]Response, error) {
	if twin == 0 {
		return nil, errors.New("peer: broadcast: no destination twin")
	}
	var o CallOptions
	if opts != nil {
		o = *opts
	}
	o.Session = BroadcastSession
	return p.Call(ctx, []uint32{twin}, cmd, data, &o)
}
