package registrar

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

var (
	_ Store          = (*PostgresStore)(nil)
	_ ChangeNotifier = (*PostgresStore)(nil)
)

// Defaults of OpenPostgres.
const (
	// DefaultPostgresPoll is how often a PostgresStore reads the change
	// counter to catch changes whose notification it missed.
	DefaultPostgresPoll = time.Second
	// DefaultPostgresConnectTimeout bounds a connection attempt when the
	// URL sets no connect_timeout.
	DefaultPostgresConnectTimeout = 5 * time.Second
)

// notifyChannel is the LISTEN/NOTIFY channel that wakes the change feeds of
// every registrar sharing a database. The payload is the new sequence
// number; it is only a hint, the record is registrar_changes.
const notifyChannel = "registrar_changes"

// migrationLock is the advisory lock key that serializes migrations of
// registrars starting at once ("rmb-reg" and 1).
const migrationLock int64 = 0x726d622d72656701

//go:embed migrations/*.sql
var migrationFiles embed.FS

// PostgresOptions tune OpenPostgres. The zero value (or nil) means
// defaults.
type PostgresOptions struct {
	// Poll is how often the store reads the change counter to wake change
	// feeds whose notification was lost. Default DefaultPostgresPoll.
	Poll time.Duration
	// Logger receives connection trouble of the change listener. Default:
	// discard.
	Logger *slog.Logger
}

// PostgresStore is a Store in a PostgreSQL database, which several
// registrar processes may share. Open it with OpenPostgres.
//
// Tables (created by the versioned migrations in migrations/, recorded in
// registrar_schema_migrations):
//
//	registrar_counters: one row, the last twin id and the last change
//	                    sequence number; every write locks it, so ids and
//	                    sequence numbers are dense and commit in order
//	registrar_accounts: twin id -> account, public key unique
//	registrar_changes:  seq -> twin id, one row per twin (its latest change)
//
// Every write also sends NOTIFY registrar_changes, which wakes the change
// feeds of all registrars on the database at once; a poll of the counter
// every PostgresOptions.Poll catches what a lost notification missed.
type PostgresStore struct {
	pool *pgxpool.Pool
	addr string // host:port, for error texts
	poll time.Duration
	log  *slog.Logger

	closed atomic.Bool
	stop   context.CancelFunc
	wg     sync.WaitGroup // the listener and the poller

	lastSeen atomic.Uint64 // highest sequence number the watchers were woken for
	mu       sync.Mutex    // guards subs and nextSub
	subs     map[int]func()
	nextSub  int
}

// ChangeNotifier is implemented by stores that other processes write to.
// The Server subscribes to it so that its change feed also wakes for
// changes it did not make.
type ChangeNotifier interface {
	// OnChange calls fn (from any goroutine, without blocking for long)
	// after the store learns of changes made elsewhere, and returns a
	// function that ends the subscription.
	OnChange(fn func()) (cancel func())
}

// IsPostgresURL reports whether s names a PostgreSQL database
// (postgres:// or postgresql://) rather than a file.
func IsPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// OpenPostgres connects to the database at dbURL (postgres://user:password@
// host:port/database?sslmode=...), applies the migrations it lacks and
// starts watching for changes made by other registrars. Errors name the
// server's address, never the password.
func OpenPostgres(ctx context.Context, dbURL string, opts *PostgresOptions) (*PostgresStore, error) {
	var o PostgresOptions
	if opts != nil {
		o = *opts
	}
	if o.Poll <= 0 {
		o.Poll = DefaultPostgresPoll
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	secrets := urlSecrets(dbURL)
	if !IsPostgresURL(dbURL) {
		return nil, fmt.Errorf("registrar: bad PostgreSQL URL %s: want postgres://user:password@host:port/database", RedactURL(dbURL))
	}
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("registrar: bad PostgreSQL URL %s: %s", RedactURL(dbURL), scrub(err.Error(), secrets))
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = DefaultPostgresConnectTimeout
	}
	s := &PostgresStore{
		addr: net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))),
		poll: o.Poll,
		log:  o.Logger,
		subs: make(map[int]func()),
	}
	if s.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, fmt.Errorf("registrar: PostgreSQL at %s: %s", s.addr, scrub(err.Error(), secrets))
	}
	if err := s.migrate(ctx); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("registrar: PostgreSQL at %s (database %q, user %q): %s", s.addr, cfg.ConnConfig.Database, cfg.ConnConfig.User, scrub(err.Error(), secrets))
	}
	var latest int64
	if err := s.pool.QueryRow(ctx, `SELECT last_seq FROM registrar_counters`).Scan(&latest); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("registrar: PostgreSQL at %s: %s", s.addr, scrub(err.Error(), secrets))
	}
	s.lastSeen.Store(uint64(latest))
	wctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.wg.Add(2)
	go s.listen(wctx)
	go s.pollChanges(wctx)
	return s, nil
}

// RedactURL returns a database URL fit for logs and errors: a file path as
// it is, a URL with its password replaced by "xxxxx".
func RedactURL(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// userinfoPassword finds the password of a URL even when the URL does not
// parse.
var userinfoPassword = regexp.MustCompile(`^[^:/]+://[^:@/]*:([^@/]+)@`)

// urlSecrets lists the passwords a database URL carries.
func urlSecrets(s string) []string {
	var out []string
	if m := userinfoPassword.FindStringSubmatch(s); m != nil {
		out = append(out, m[1])
		if p, err := url.PathUnescape(m[1]); err == nil && p != m[1] {
			out = append(out, p)
		}
	}
	if u, err := url.Parse(s); err == nil {
		if p := u.Query().Get("password"); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// scrub replaces every secret in msg.
func scrub(msg string, secrets []string) string {
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
		}
	}
	return msg
}

// migration is one versioned schema change, from migrations/NNNN_name.sql.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads the embedded migrations in version order; versions
// run 1, 2, 3... without gaps.
func loadMigrations() ([]migration, error) {
	entries, err := migrationFiles.ReadDir("migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("migration file %s is not named NNNN_name.sql", e.Name())
		}
		data, err := migrationFiles.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(data)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: want version %d", m.name, i+1)
		}
	}
	return ms, nil
}

// migrate applies the migrations the database lacks, in one transaction
// holding an advisory lock, so registrars starting at once apply each
// migration exactly once.
func (s *PostgresStore) migrate(ctx context.Context) error {
	ms, err := loadMigrations()
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS registrar_schema_migrations (
			version    integer PRIMARY KEY,
			name       text NOT NULL,
			applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		var current int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM registrar_schema_migrations`).Scan(&current); err != nil {
			return err
		}
		if current > len(ms) {
			return fmt.Errorf("database schema is at version %d, newer than this registrar knows (%d): run a newer rmb-registrar", current, len(ms))
		}
		for _, m := range ms[current:] {
			// The simple protocol runs a file of several statements.
			if _, err := tx.Conn().PgConn().Exec(ctx, m.sql).ReadAll(); err != nil {
				return fmt.Errorf("migration %s: %w", m.name, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO registrar_schema_migrations (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
				return err
			}
			s.log.Info("registrar: applied database migration", "version", m.version, "name", m.name)
		}
		return nil
	})
}

// SchemaVersion returns the migration version of the database.
func (s *PostgresStore) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.pool.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM registrar_schema_migrations`).Scan(&v)
	return v, s.wrapErr(ctx, err)
}

// check reports why the store cannot serve a call right now.
func (s *PostgresStore) check(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
}

// wrapErr turns a database error into what the Store interface promises:
// ErrClosed after Close, the caller's context error when it is done,
// ErrExists for a duplicate key, and ErrUnavailable when the server cannot
// be reached.
func (s *PostgresStore) wrapErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if s.closed.Load() {
		return ErrClosed
	}
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "23505" && pe.ConstraintName == "registrar_accounts_public_key_key":
			return fmt.Errorf("%w (%s)", ErrExists, pe.Message)
		case strings.HasPrefix(pe.Code, "08"), strings.HasPrefix(pe.Code, "53"),
			pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03":
			// Connection trouble, too many clients, or a server shutting
			// down or starting up.
		default:
			return fmt.Errorf("registrar: PostgreSQL at %s: %w", s.addr, err)
		}
	}
	// Anything else that is not an SQL error is the connection failing.
	return fmt.Errorf("%w: PostgreSQL at %s: %v", ErrUnavailable, s.addr, err)
}

// retry runs fn, and once more when it failed on a connection the server
// had dropped (a pooled connection from before a server restart): a read
// always, a write only when nothing of it reached the server.
func (s *PostgresStore) retry(ctx context.Context, write bool, fn func() error) error {
	err := fn()
	if err == nil || ctx.Err() != nil || s.closed.Load() {
		return err
	}
	if write && !pgconn.SafeToRetry(err) || !write && !errors.Is(s.wrapErr(ctx, err), ErrUnavailable) {
		return err
	}
	return fn()
}

const accountColumns = `twin_id, public_key, relays, e2e_key, created_at, updated_at, seq`

// scanAccount reads one row of accountColumns.
func scanAccount(row pgx.Row) (*Account, error) {
	var (
		id, seq  int64
		a        Account
		relays   []string
		e2e, pub []byte
	)
	if err := row.Scan(&id, &pub, &relays, &e2e, &a.CreatedAt, &a.UpdatedAt, &seq); err != nil {
		return nil, err
	}
	a.ID, a.Seq, a.PublicKey = uint32(id), uint64(seq), pub
	if len(relays) > 0 {
		a.Relays = relays
	}
	if len(e2e) > 0 {
		a.E2EKey = e2e
	}
	a.CreatedAt, a.UpdatedAt = a.CreatedAt.UTC(), a.UpdatedAt.UTC()
	return &a, nil
}

// nonNil gives a NOT NULL text[] column an empty list for nil.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// nullIfEmpty stores an empty key as NULL.
func nullIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// Create implements Store. The transaction locks the counter row first, so
// concurrent creates (from any registrar on the database) run one after
// the other: the key check cannot race, and a failed create gives back its
// twin id and sequence number.
func (s *PostgresStore) Create(ctx context.Context, t Twin) (*Account, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	now := stamp()
	a := &Account{Twin: t.clone(), CreatedAt: now, UpdatedAt: now}
	err := s.retry(ctx, true, func() error {
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			var id, seq int64
			if err := tx.QueryRow(ctx, `UPDATE registrar_counters SET last_twin_id = last_twin_id + 1, last_seq = last_seq + 1 RETURNING last_twin_id, last_seq`).Scan(&id, &seq); err != nil {
				return err
			}
			var holder int64
			err := tx.QueryRow(ctx, `SELECT twin_id FROM registrar_accounts WHERE public_key = $1`, a.PublicKey).Scan(&holder)
			if err == nil {
				return fmt.Errorf("%w by twin %d", ErrExists, holder)
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			twin, ok := nextTwinID(uint64(id))
			if !ok {
				return errors.New("registrar: twin ids exhausted")
			}
			a.ID, a.Seq = twin, uint64(seq)
			b := &pgx.Batch{}
			b.Queue(`INSERT INTO registrar_accounts (`+accountColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
				id, a.PublicKey, nonNil(a.Relays), nullIfEmpty(a.E2EKey), a.CreatedAt, a.UpdatedAt, seq)
			b.Queue(`INSERT INTO registrar_changes (seq, twin_id) VALUES ($1, $2)`, seq, id)
			b.Queue(`SELECT pg_notify($1, $2)`, notifyChannel, strconv.FormatInt(seq, 10))
			return tx.SendBatch(ctx, b).Close()
		})
	})
	if errors.Is(err, ErrExists) {
		return nil, err
	}
	if err != nil {
		return nil, s.wrapErr(ctx, err)
	}
	return a, nil
}

// Get implements Store.
func (s *PostgresStore) Get(ctx context.Context, id uint32) (*Account, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	var a *Account
	err := s.retry(ctx, false, func() (err error) {
		a, err = scanAccount(s.pool.QueryRow(ctx, `SELECT `+accountColumns+` FROM registrar_accounts WHERE twin_id = $1`, int64(id)))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: twin %d", ErrNotFound, id)
	}
	return a, s.wrapErr(ctx, err)
}

// GetByPublicKey implements Store.
func (s *PostgresStore) GetByPublicKey(ctx context.Context, pub []byte) (*Account, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	var a *Account
	err := s.retry(ctx, false, func() (err error) {
		a, err = scanAccount(s.pool.QueryRow(ctx, `SELECT `+accountColumns+` FROM registrar_accounts WHERE public_key = $1`, pub))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: no twin has this public key", ErrNotFound)
	}
	return a, s.wrapErr(ctx, err)
}

// Update implements Store. It locks the account row, then (when something
// changes) the counter row; creates lock only the counter, so the two
// cannot deadlock.
func (s *PostgresStore) Update(ctx context.Context, id uint32, u AccountUpdate) (*Account, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	var a *Account
	err := s.retry(ctx, true, func() error {
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) (err error) {
			a, err = scanAccount(tx.QueryRow(ctx, `SELECT `+accountColumns+` FROM registrar_accounts WHERE twin_id = $1 FOR UPDATE`, int64(id)))
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("%w: twin %d", ErrNotFound, id)
			}
			if err != nil || !u.apply(a, stamp()) {
				return err
			}
			var seq int64
			if err := tx.QueryRow(ctx, `UPDATE registrar_counters SET last_seq = last_seq + 1 RETURNING last_seq`).Scan(&seq); err != nil {
				return err
			}
			a.Seq = uint64(seq)
			b := &pgx.Batch{}
			b.Queue(`UPDATE registrar_accounts SET relays = $2, e2e_key = $3, updated_at = $4, seq = $5 WHERE twin_id = $1`,
				int64(id), nonNil(a.Relays), nullIfEmpty(a.E2EKey), a.UpdatedAt, seq)
			b.Queue(`UPDATE registrar_changes SET seq = $2 WHERE twin_id = $1`, int64(id), seq)
			b.Queue(`SELECT pg_notify($1, $2)`, notifyChannel, strconv.FormatInt(seq, 10))
			return tx.SendBatch(ctx, b).Close()
		})
	})
	if errors.Is(err, ErrNotFound) {
		return nil, err
	}
	if err != nil {
		return nil, s.wrapErr(ctx, err)
	}
	return a, nil
}

// Changes implements Store. One statement reads the counter and the feed,
// so both come from one snapshot.
func (s *PostgresStore) Changes(ctx context.Context, since uint64, limit int) ([]Change, uint64, error) {
	if err := s.check(ctx); err != nil {
		return nil, 0, err
	}
	if since == math.MaxUint64 {
		limit = 0 // the latest sequence number only
	}
	from := int64(min(since, math.MaxInt64))
	var (
		out    []Change
		latest int64
	)
	err := s.retry(ctx, false, func() error {
		out = nil
		rows, err := s.pool.Query(ctx, `SELECT c.last_seq, ch.seq, ch.twin_id FROM registrar_counters c
			LEFT JOIN LATERAL (SELECT seq, twin_id FROM registrar_changes WHERE seq > $1 ORDER BY seq LIMIT $2) ch ON true`,
			from, max(limit, 0))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var seq, twin *int64
			if err := rows.Scan(&latest, &seq, &twin); err != nil {
				return err
			}
			if seq != nil {
				out = append(out, Change{Seq: uint64(*seq), TwinID: uint32(*twin)})
			}
		}
		return rows.Err()
	})
	if err != nil {
		return nil, 0, s.wrapErr(ctx, err)
	}
	return out, uint64(latest), nil
}

// OnChange implements ChangeNotifier.
func (s *PostgresStore) OnChange(fn func()) (cancel func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextSub
	s.nextSub++
	s.subs[id] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.subs, id)
	}
}

// wake tells the subscribers that the feed may have grown past seq (0: it
// may have, without knowing to what).
func (s *PostgresStore) wake(seq uint64) {
	if seq != 0 {
		for {
			old := s.lastSeen.Load()
			if seq <= old {
				return // already woken for it
			}
			if s.lastSeen.CompareAndSwap(old, seq) {
				break
			}
		}
	}
	s.mu.Lock()
	fns := make([]func(), 0, len(s.subs))
	for _, fn := range s.subs {
		fns = append(fns, fn)
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// listen keeps a connection of its own LISTENing on the notify channel and
// wakes the subscribers on each notification. When the connection fails it
// reconnects with backoff; pollChanges covers the gap.
func (s *PostgresStore) listen(ctx context.Context) {
	defer s.wg.Done()
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		connected, err := s.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if connected {
			// The server dropped a working connection: it may be
			// restarting, and then every pooled connection is dead too.
			// Replace them rather than fail a request on each.
			s.pool.Reset()
		}
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		s.log.Warn("registrar: change listener lost PostgreSQL; polling meanwhile", "addr", s.addr, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// listenOnce listens on one connection until it fails, and reports
// whether it got as far as listening.
func (s *PostgresStore) listenOnce(ctx context.Context) (connected bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return false, err
	}
	s.wake(0) // changes may have landed while nobody listened
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return true, err
		}
		seq, _ := strconv.ParseUint(n.Payload, 10, 64)
		s.wake(seq)
	}
}

// pollChanges reads the change counter every s.poll and wakes the
// subscribers when it moved past what they were woken for.
func (s *PostgresStore) pollChanges(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		qctx, cancel := context.WithTimeout(ctx, 2*s.poll+time.Second)
		var latest int64
		err := s.pool.QueryRow(qctx, `SELECT last_seq FROM registrar_counters`).Scan(&latest)
		cancel()
		if err == nil {
			s.wake(uint64(latest))
		}
	}
}

// Close implements Store.
func (s *PostgresStore) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.stop()
	s.wg.Wait()
	s.pool.Close()
	return nil
}
