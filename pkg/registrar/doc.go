// Package registrar is the twin directory of RMB: an HTTP server that keeps
// one account per twin (signing key, relay domains, e2e key), the stores
// behind it, and a caching client that relays and peers use to look twins
// up. Serve a registrar and look twins up:
//
//	srv := registrar.NewServer(&registrar.Options{Store: store}) // nil Options: in memory
//	defer srv.Close()
//	go http.ListenAndServe(":8090", srv.Handler())
//
//	c := registrar.NewClient("http://127.0.0.1:8090", nil)
//	twin, err := c.Register(ctx, id, []string{"relay.example"}) // a twin registers itself
//	twin, err = c.Twin(ctx, 7)                                 // cached; errors.Is(err, ErrNotFound)
//	go c.Watch(ctx)                                            // keeps the cache fresh
//
// The HTTP API (accounts, signed registration and updates, the change
// feed) is docs/protocol.md §8; rmb-registrar serves it with the stores
// below.
//
// # Client
//
// Client speaks this API. Client.Twin is the hot path of relays and peers:
// answers are cached (60 s), "not found" is cached briefly (5 s), and
// concurrent misses for the same twin share one request. Client.Watch
// follows the change feed and drops changed twins from the cache, so a
// running Watch keeps the cache fresh within the round trip of one long
// poll.
//
// # Storage
//
// The server keeps accounts in a Store: BoltStore (one bbolt file; accounts,
// twin ids and the sequence number survive restarts), PostgresStore (a
// PostgreSQL database several servers may share; OpenPostgres applies the
// embedded migrations, and changes made through one server wake the change
// feed of all) or MemStore (for tests and embedding). A store that cannot
// reach its database returns ErrUnavailable, which the server answers 503.
package registrar
