// Package registrar is the twin directory of RMB: an HTTP server that keeps
// one account per twin, the stores behind it, and a caching client that
// relays and peers use to look twins up (PROTOCOL.md §8).
//
// # Accounts
//
// An account binds a twin id (assigned sequentially from 1) to a 32-byte
// signing public key (ed25519 or sr25519), the relay domains the twin is
// reachable on ("host" or "host:port") and an optional 33-byte secp256k1
// end-to-end key. On the wire it is
//
//	{"twin_id": 7, "public_key": "<base64>", "relays": ["r1.example"],
//	 "rmb_enc_key": "<base64>", "created_at": "<RFC3339>", "updated_at": "<RFC3339>"}
//
// Every failure is answered as {"error": "<message>"} with a 4xx or 5xx status.
//
// # Registration
//
// A twin registers itself with POST /v1/accounts:
//
//	{"timestamp": 1700000000, "public_key": "<base64>", "signature": "<base64>",
//	 "relays": ["r1.example"], "rmb_enc_key": "<base64>"}
//
// The signature is the raw 64-byte signature, without a type byte, over the
// ASCII text "<timestamp>:<public_key as sent>". The server tries ed25519
// first, then sr25519 (identity.VerifyRaw). The timestamp must be within
// Options.TimestampWindow (30 s) of server time. Answers: 201 and the
// account; 400 for malformed input or a stale timestamp; 401 when the
// signature does not verify; 409 when the key is already registered.
//
// # Lookup
//
// GET /v1/accounts?twin_id=N or GET /v1/accounts?public_key=<base64> answers
// 200 and the account, 404 if there is none, 400 if the query is malformed.
//
// # Update
//
// PATCH /v1/accounts/{twin_id} with {"relays": [...], "rmb_enc_key": "..."}
// changes the fields present in the body and leaves the others as they are
// (an empty list removes all relays, an empty key removes the e2e key). Only
// the owner may update; it proves it with the header
//
//	X-Auth: base64("<unix ts>:<twin_id>") + ":" + base64(raw signature of "<unix ts>:<twin_id>")
//
// The challenge is valid for one minute (Options.ChallengeTTL) and may be at
// most Options.TimestampWindow in the future. A missing, malformed, expired
// or foreign signature is 401, a challenge naming another twin than the
// path is 403, an unknown twin is 404.
//
// # Change feed
//
// Every create and every update that changes something bumps a global,
// persisted sequence number. GET /v1/accounts/changes?since=S&wait=W answers
//
//	{"seq": 42, "changes": [{"seq": 41, "twin_id": 3}, {"seq": 42, "twin_id": 9}]}
//
// at once if some twin changed after S, and otherwise holds the request for
// up to W seconds (default 25, at most 60) until one does. Each twin is
// listed once, with the sequence number of its latest change. "seq" is the
// value to pass as since next time. Without since, or with a since ahead of
// the server (a restored database), the answer comes at once and carries the
// current sequence number, which is where a follower starts.
//
// All routes are mounted under both /v1 and /api/v1; GET /healthz answers
// 200.
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
