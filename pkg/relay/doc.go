// Package relay is an RMB relay: it authenticates twins connecting over
// WebSocket, routes the envelopes they send to other sessions, keeps
// envelopes for twins that are offline, and exchanges envelopes with other
// relays (federation). New never listens; serve Handler on any
// http.Server:
//
//	r, err := relay.New(&relay.Options{
//		Domains:   []string{"relay.example"},
//		Directory: registrar.NewClient("https://registrar.example", nil),
//		Store:     relay.NewRedisStore(rdb, nil), // default: in memory
//	})
//	if err != nil { ... }
//	srv := &http.Server{Addr: ":8080", Handler: r.Handler()}
//	go srv.ListenAndServe()
//	...
//	r.Shutdown(ctx) // closes the sessions; their unsent envelopes go to the Store
//	srv.Shutdown(ctx)
//
// Handler serves, on one port: a WebSocket upgrade on any path (a session,
// authenticated by the JWT in the query string), POST / (federation from
// other relays), GET / (the status page, with /status.json and
// /status/events), GET /metrics (Registry), GET /healthz, and, with
// Options.AdminToken, the admin API under /api/ (Stats, Sessions,
// Disconnect). SetPolicy replaces the allow list and routing rules at
// runtime. Every bound (sessions per twin and per address, send queues,
// the store, federation queues, the rate limit) is an Options field with
// a documented default; every envelope that is not delivered is counted
// in rmb_relay_dropped_total{reason}.
//
// With Options.NATS several relay processes sharing one Redis store are
// one logical relay (docs/scaling.md).
//
// How it works inside (connecting, a session's two loops, routing an
// envelope step by step, store and forward, federation, the cluster) is in
// docs/internals.md, "The relay"; the wire formats in docs/protocol.md.
package relay
