// Package peer is the RMB peer (rmb-peer): it holds a twin's identity,
// keeps WebSocket connections to up to four relays, signs, verifies,
// encrypts and decrypts envelopes, and connects local programs to the bus,
// either in-process (Call, Handle) or through Redis lists with the JSON
// API of docs/protocol.md §9.
//
// # Start-up
//
// Run looks the twin up at the registrar by its public key. A twin that
// does not exist is registered with the relay domains (the host[:port] of
// each relay URL) and the identity's e2e key; one whose relays or e2e key
// differ is updated unless Options.NoUpdate is set. Ready is closed once
// the twin id is known.
//
// # Relay connections
//
// Each relay has a goroutine that dials URL?<JWT> (no session id, like the
// reference peer), reads binary envelopes, pings every PingInterval and
// reconnects with jittered exponential backoff. Sends go to a healthy
// connection, round-robin, and fail over to the next on a write error; with
// no connection up they wait for one until the envelope's deadline. A
// send that finds its connection idle writes at once; envelopes sent while
// a write is out are written together by the next sender, with the
// network connection corked, so they share one syscall.
//
// # Outgoing requests (client -> peer -> relay)
//
//	msgbus.system.local --BLMOVE/LMOVE--> msgbus.system.local.processing
//	  decode; garbage -> msgbus.system.deadletter (+ error on ret if known)
//	  one uid, one signed envelope per destination (cipher when the
//	  destination has an e2e key, else plain); remember uid -> (ret, ref,
//	  deadline, destinations)
//	  sent, or undeliverable before the TTL -> error on ret + dead letter
//	MULTI; HSET msgbus.system.pending <uid>/<dst> ...; LREM processing; EXEC
//
// A request stays in the processing list until it was handed to a relay,
// so a peer that stops or crashes sends it again on the next start
// (at-least-once: a crash between the send and the LREM sends it twice).
//
// An entry can also be in a processing list with no worker holding it
// while the peer runs: Redis moved it but the reply was lost (the
// connection dropped, or Redis restarted after the move with AOF), or its
// LREM failed for good. The peer counts the entries its workers hold by
// their exact raw value and scans each processing list every two seconds,
// and at once after a Redis error; an entry two consecutive scans saw
// unheld is handled like a new one (processing.go). So a lost reply costs
// the client a few seconds, not its whole timeout, and no entry is handled
// twice at the same time by one process.
//
// One Redis database serves one peer process. A second peer on the same
// database would take the entries the first one is handling for lost and
// send them again; the processing lists are this peer's.
//
// Which request an answer belongs to survives a restart: once sent, each
// destination still waiting is a field of the hash msgbus.system.pending
// (ret, ref, deadline, signed envelope), written in the same transaction
// as the LREM, deleted in the same transaction as the push of its answer
// or 408 on ret. Run loads the hash before it connects to a relay, so
// answers the relay kept while the peer was down reach the client, sends
// those requests again once connected (an answer that died with the last
// process comes again from the receiver's cache), and requests that ran
// out of time get their 408 (pending.go).
//
// # Incoming envelopes (relay -> peer)
//
// Each envelope is verified in the order of docs/protocol.md §9: TTL
// (102), source twin known (103), signature (104), then duplicate
// suppression by (uid, source, kind) until the deadline, then the payload
// (105 cipher without e2e key, 106 decryption failure). A failing request
// is answered with a signed error envelope; a failing answer is dropped
// and counted. Envelopes from twin 0 are relay errors and are not
// verified. The connection's reader does this itself when the sender's
// key is in the registrar cache, pushing on to Redis without waiting
// (pushAsync; a failed push is retried and reported on a goroutine of its
// own), and hands the envelope to a pool of inbound workers when the
// sender has to be looked up, so a slow registrar never stalls a
// connection. Error answers are sent on goroutines of their own.
//
// Requests pass the command-name check (CheckCommand: charset, length,
// no reserved prefix such as system. or reply., so a remote twin never
// reaches the peer's own lists or a client's ret queue), the Policy, then
// go to the built-in rmb.version, an in-process Handler, or Redis:
// msgbus.<cmd> gets the IncomingRequest JSON with ref = envelope uid and
// ret = msgbus.system.reply, within the bounds of Options.Serve,
// MaxCommandQueues, MaxQueueBytes and MaxCommandBytes; a request left in
// msgbus.<cmd> past its deadline is swept out, answered 408 and
// dead-lettered (cmdqueue.go). Services push their OutgoingResponse on
// msgbus.system.reply (again through a processing list); the peer signs
// it to dst and caches it (up to MaxAnswerCacheBytes) so a re-sent
// request is answered again without reaching the service twice.
//
// Answers are matched to the pending request by uid and source twin and
// pushed on the client's ret with its ref restored. An answer with an
// unknown or expired uid is dropped and counted. A relay error (source
// twin 0) names no destination: it goes to the destination still waiting
// when only one is left, and is kept until then otherwise, so a request
// to N twins gets exactly N responses. When the deadline passes, every
// destination that did not answer gets an error with code 408.
//
// # Batching
//
// Per-message Redis work shares round trips while keeping each message's
// guarantees (batch.go). One loop sends every Redis command that does not
// block: what is queued goes out as one pipeline, then what was queued
// meanwhile, so batching adds no latency and a busy peer sends many
// commands per round trip. popLoop blocks in BLMOVE on its own connection
// only when its queue ran dry; otherwise it asks the loop to move up to 64
// messages with a Lua loop of LMOVEs, so every popped message is in the
// processing list before a worker sees it. A fixed pool of Workers
// goroutines handles them. Bounded pushes are LPUSHes; one that took its
// list past the bound is taken back (LREM) unless a consumer already
// popped it. LREMs of handled messages and pending-hash writes ride in the
// same pipelines (a MULTI/EXEC when a request is persisted); Run stops the
// loop last.
//
// # No silent loss
//
// Every Redis list the peer pushes to is bounded by QueueLimit: a push
// that finds the list full is taken back, so a full service queue answers
// the caller with 429 and a full ret queue dead-letters the answer;
// nothing is trimmed. Unanswered requests are sent again, same uid (see
// resend.go): all of them when a relay connection drops, each after a
// quarter, a half and three quarters of its TTL, and those loaded at
// start. Receivers suppress the duplicate and re-send their cached
// answer, or answer once their service is done with the first copy.
//
// # Operations
//
// Registry exposes Prometheus metrics (requests and responses in and out,
// errors by code, drops by reason, dead letters, messages recovered from
// a processing list, relay connection state, round-trip latency); logs go
// to Options.Logger.
package peer
