// Package relay is the RMB relay (PROTOCOL.md §4, §5): it authenticates
// twins connecting over WebSocket, routes the envelopes they send to other
// sessions on this relay, keeps envelopes for twins that are offline, and
// exchanges envelopes with other relays (federation).
//
// New never listens; serve Handler on any http.Server:
//
//	r, _ := relay.New(&relay.Options{
//		Domains:   []string{"relay.example"},
//		Directory: registrar.NewClient("https://registrar.example", nil),
//	})
//	http.ListenAndServe(":8080", r.Handler())
//
// # Connecting
//
// A client opens a WebSocket on any path with the JWT as the whole query
// string (wss://relay.example/?eyJ...). Before upgrading, the relay parses
// the token (400 if missing or malformed), checks its time against
// Options.TokenPolicy (401 if expired, too long-lived or issued in the
// future), looks the twin up in the Directory (401 if unknown), verifies the
// token signature with the twin's key (401), checks the allow list (403)
// and the session bounds: MaxSessionsPerTwin (a live session id may always
// reconnect) and MaxSessionsPerAddress, the address being the remote one or,
// from Options.TrustedProxies only, the nearest untrusted hop of
// X-Forwarded-For (429, counted in rmb_relay_refused_total{reason}).
// Refusals carry a plain-text reason. Every other request has a read
// deadline, body included (Options.ReadTimeout).
//
// The connection becomes the session (twin, sid), sid being the token's
// "sid" claim ("" when absent). A second connection for the same session
// replaces the first: the map entry is swapped under the relay's lock, the
// old connection is closed (code 4000), and when the old session cleans up
// it removes the map entry only if it still points to itself, so it can
// never unregister its successor.
//
// # A session
//
// Two goroutines serve a session. The read loop reads one message at a
// time (the read limit is MaxEnvelopeSize; a larger frame closes the
// connection with 1009) and routes it. The send loop is the only writer of
// envelopes: it drains the bounded send queue and, when woken, the
// session's queue in the Store, writing frames into the connection's
// buffer and flushing once when the queue runs dry (or every 32 KiB), so a
// burst of envelopes costs one write syscall (write coalescing, as in
// DERP). Every write to the network has a deadline (WriteTimeout) and a
// failed write closes the session; envelopes written but not flushed then
// go back to the Store with the unwritten ones (at least once). A timer,
// not a goroutine, pings a client silent for PingInterval and closes the
// session when nothing comes back within PingTimeout.
//
// The WebSocket codec on this path is internal/wsframe (handshake, frames,
// close handshake; no extensions), not coder/websocket, which flushes
// every message and allocates on every read; clients and peers keep
// coder/websocket. An idle session holds no read or write buffer (they
// come from pools while there is traffic) and no send queue (it is made at
// the first delivery): about 11 KiB of heap and stacks per idle session,
// see docs/benchmarks.md.
//
// # Routing an envelope
//
// handleFrame reads only the routing fields (envelope.ReadRouting, no
// allocation) and, in order:
//
//  1. drops a frame over the size limit or that does not parse;
//  2. applies the twin's rate limit ("exceeded rate limits");
//  3. answers an app-level ping with a pong;
//  4. checks that the source is the session ("message wrong source");
//  5. drops an expired envelope;
//  6. refuses destination twin 0 ("destination twin 0 is not a twin") and
//     a deadline beyond now + MaxTTL + a minute of clock skew ("envelope
//     deadline too far in the future"), as federation does;
//  7. applies the routing rules to requests ("message denied by routing
//     rules"); answers pass, so the answer to an allowed request arrives;
//  8. routes: a live session here gets it in memory; a twin that lists one
//     of our Domains but has no live session gets it stored ("destination
//     offline" instead when the tags say fail-fast); an unknown twin is
//     "unknown twin destination"; anything else is federated.
//
// Errors are answered only to requests, as unsigned envelopes with the
// request's uid, the sending session as destination, source twin 0 and
// error {code, message}. Every drop is counted with a reason
// (rmb_relay_dropped_total{reason}).
//
// A slow receiver never blocks senders: delivery to a session is a
// non-blocking send on its queue. When the queue is full the envelope goes
// to the Store instead and the session is marked spilled; while spilled,
// new envelopes also go to the Store, behind the older ones, and the send
// loop drains the queue first, then the Store, before it clears the mark.
// So envelopes to one session are delivered in the order they were routed,
// whether they waited in memory or in the Store. A new session starts
// spilled (it first drains what was stored while it was away), and a
// replacing session waits until the replaced one has put its unsent
// envelopes back at the front of the Store.
//
// # Store and forward
//
// A Store holds one FIFO queue per session, bounded by a message count and
// a byte count per session, per twin (all its session ids together, so
// made-up ids do not multiply the cap) and in total bytes (StoreOptions;
// the sender gets "destination queue is full" or "relay store is full");
// envelopes past their TTL are discarded when popped (and by a periodic
// sweep in MemStore) and counted as store_expired. No operation touches two
// twins, so a Redis Cluster can shard the queues by twin.
//
// MemStore is the default. RedisStore keeps the queues in Redis so they
// survive a relay restart. It uses lists, not streams: a session's queue
// has exactly one consumer (its send loop), so consumer groups, entry ids
// and pending-entry lists would be bookkeeping without a use; LPOP with a
// count pops a batch in one round trip; and a session that loses its
// connection must put the envelopes it popped but did not write back at
// the front of its queue, which LPUSH does and a stream cannot. The caps
// need counters next to the lists; a twin's keys sit under one hash tag and
// are updated by Lua scripts, so each operation is atomic and single-slot
// (the store-wide total, on a plain Redis only, adds two keys).
//
// # Federation
//
// Sending: a federated envelope is queued for the best-ranked relay of its
// destination twin (one queue per domain, up to FederationWorkers workers
// that run while it has ready jobs). A worker POSTs the raw envelope to
// scheme://<domain>/, trying the twin's relays ranked by their failures
// over RankerPeriod. 2xx is success; 5xx, 408, 429 and network errors count
// as failures and, when no relay took the envelope, the job is retried
// after an exponential backoff until its TTL runs out; any other 4xx is
// final for that relay. A request that cannot be delivered gets an error
// envelope back to its sender. The HTTP client keeps connections alive
// between POSTs.
//
// Every job counts against the federation bounds from its acceptance
// until it is posted or given up, retry backoff included:
// FederationQueueSize and FederationQueueBytes per domain and per source
// twin,
// FederationMaxJobs and FederationMaxBytes in all ("federation queue is
// full" over them). A domain without jobs for FederationIdleTimeout is
// forgotten with its federation_requests_total series. Unless
// FederationAllowPrivate, the default FederationClient refuses loopback,
// private, link-local and multicast addresses, checked on the address it
// dials (after DNS), and IP literals are refused before queuing
// ("destination relay address refused", dropped_total{reason=
// "federation_address"}). With FederationRedis, a job is written to Redis
// before it counts as accepted and removed when done; New posts the jobs a
// previous incarnation (same first domain) left there (fedstore.go).
//
// Receiving (POST /): the body is limited to MaxEnvelopeSize (413), must
// decode (400), must be signed by its source twin, which must exist (401),
// must be within the source twin's rate limit (429), must pass the routing
// rules (403), and its destination must be a twin of this relay (404). Then it is delivered or stored and the answer is 202.
// Envelopes received by federation are never federated again.
//
// Federation remembers what it accepted, by (source, destination, kind,
// uid), until the envelope's deadline: a replayed POST is answered 202
// again but not delivered again (dropped_total{reason="replay"}). The
// memory is bounded (the entries closest to their deadline go first when
// it is full) and does not survive a restart; peers suppress duplicates by
// uid as well. An envelope whose deadline lies more than MaxTTL plus a
// minute ahead is refused with 400 (reason "future").
//
// # Relay cluster
//
// With Options.NATS (rmb-relay --nats) the relay is one instance of a
// cluster: the instances with the same Domains, the same NATS and one
// shared Store (a RedisStore; New refuses a MemStore) are one logical
// relay, and Options.Instance names this one in logs, metrics and the
// status page. An instance holding (twin, sid) subscribes to the session's
// NATS subject; delivery to a session held elsewhere is a NATS request the
// holder acknowledges, and NATS no-responders means nobody holds it
// (fail-fast answers at once; anything else goes to the store, followed by
// a wake-up on the subject). A connecting instance asks the holder to hand
// the session over (it closes with 4000 and requeues its unsent
// envelopes), then subscribes, then drains the store. The subjects and
// the races are described in cluster.go and docs/scaling.md.
//
// # Operations
//
// /metrics serves the relay's own Prometheus registry, /healthz answers 200
// until Shutdown. GET / is a live status page (status.html, embedded) fed
// by /status/events (server-sent events, one snapshot a second) or
// /status.json; it shows aggregates only unless the request carries the
// admin token, which adds the sessions list. With Options.AdminToken, /api/stats, /api/sessions and
// DELETE /api/sessions/{twin} are served behind "Authorization: Bearer".
// SetPolicy swaps the allow list and routing rules at runtime without
// touching sessions, except that sessions of twins no longer allowed are
// closed.
package relay
