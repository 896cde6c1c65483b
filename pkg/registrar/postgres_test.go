package registrar

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rmb-go/rmb/internal/pgtest"
	"github.com/rmb-go/rmb/pkg/identity"
)

// The tests share one PostgreSQL server, each on a database of its own.
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	os.Exit(code)
}

// openPostgresURL opens a store on dbURL, closed when the test ends.
func openPostgresURL(t testing.TB, dbURL string, opts *PostgresOptions) *PostgresStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := OpenPostgres(ctx, dbURL, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// openPostgres opens a store on a fresh database of the shared server.
func openPostgres(t testing.TB, opts *PostgresOptions) *PostgresStore {
	t.Helper()
	return openPostgresURL(t, pgtest.Shared(t).NewDatabase(t), opts)
}

// TestServerStores runs the server and client tests over the bolt and
// PostgreSQL stores (the plain runs use the MemStore).
func TestServerStores(t *testing.T) {
	factories := []struct {
		name string
		open func(t testing.TB) Store
	}{
		{"bolt", func(t testing.TB) Store {
			s, err := OpenBolt(filepath.Join(t.TempDir(), "registrar.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}},
		{"postgres", func(t testing.TB) Store { return openPostgres(t, nil) }},
	}
	tests := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"CreateAccount", TestCreateAccount},
		{"AccountJSON", TestAccountJSON},
		{"CreateAccountErrors", TestCreateAccountErrors},
		{"Lookup", TestLookup},
		{"UpdateAccount", TestUpdateAccount},
		{"UpdateClears", TestUpdateClears},
		{"Changes", TestChanges},
		{"ChangesLongPoll", TestChangesLongPoll},
		{"CloseReleasesPolls", TestCloseReleasesPolls},
		{"ClientRegisterLookupUpdate", TestClientRegisterLookupUpdate},
		{"ClientWatch", TestClientWatch},
	}
	t.Cleanup(func() { serverStore = nil })
	for _, f := range factories {
		t.Run(f.name, func(t *testing.T) {
			serverStore = f.open
			for _, tt := range tests {
				t.Run(tt.name, tt.fn)
			}
		})
	}
}

// twoInstances starts two registrars on one fresh database.
func twoInstances(t *testing.T, opts *PostgresOptions) (url1, url2 string, s1, s2 *PostgresStore) {
	t.Helper()
	db := pgtest.Shared(t).NewDatabase(t)
	s1, s2 = openPostgresURL(t, db, opts), openPostgresURL(t, db, opts)
	hs1, _ := startServer(t, &Options{Store: s1}, nil)
	hs2, _ := startServer(t, &Options{Store: s2}, nil)
	return hs1.URL, hs2.URL, s1, s2
}

// TestPostgresDenseIDs registers concurrently through two registrars on one
// database: the twin ids and change sequence numbers are 1..n, each once.
func TestPostgresDenseIDs(t *testing.T) {
	url1, url2, s1, _ := twoInstances(t, nil)
	const perWorker, workers = 5, 4 // per instance
	ids := make(chan uint32, 2*perWorker*workers)
	var wg sync.WaitGroup
	for _, base := range []string{url1, url2} {
		for range workers {
			wg.Go(func() {
				for range perWorker {
					id := newIdentity(t, identity.Ed25519)
					a := call(t, http.MethodPost, base+"/v1/accounts", createBody(id, time.Now().Unix(), nil), nil)
					if a.status != http.StatusCreated {
						t.Errorf("register: %d %s", a.status, a.body)
						return
					}
					ids <- a.account(t).TwinID
				}
			})
		}
	}
	wg.Wait()
	close(ids)
	var got []uint32
	for id := range ids {
		got = append(got, id)
	}
	slices.Sort(got)
	n := 2 * perWorker * workers
	want := make([]uint32, n)
	for i := range want {
		want[i] = uint32(i + 1)
	}
	if !slices.Equal(got, want) {
		t.Errorf("twin ids %v, want 1..%d each once", got, n)
	}
	changes, latest, err := s1.Changes(context.Background(), 0, 1000)
	if err != nil || latest != uint64(n) || len(changes) != n || changes[n-1].Seq != uint64(n) {
		t.Errorf("changes %v latest %d, %v; want %d changes up to seq %d", changes, latest, err, n, n)
	}
}

// TestPostgresSameKeyAtOnce registers the same key through both
// registrars at once: one 201, one 409, and the loser leaves no gap.
func TestPostgresSameKeyAtOnce(t *testing.T) {
	url1, url2, _, _ := twoInstances(t, nil)
	const rounds = 8
	for round := range rounds {
		id := newIdentity(t, identity.Sr25519)
		body := createBody(id, time.Now().Unix(), nil)
		var (
			wg       sync.WaitGroup
			statuses [2]int
			start    = make(chan struct{})
		)
		for i, base := range []string{url1, url2} {
			wg.Go(func() {
				<-start
				statuses[i] = call(t, http.MethodPost, base+"/v1/accounts", body, nil).status
			})
		}
		close(start)
		wg.Wait()
		slices.Sort(statuses[:])
		if statuses != [2]int{http.StatusCreated, http.StatusConflict} {
			t.Fatalf("round %d: statuses %v, want one 201 and one 409", round, statuses)
		}
	}
	// The next twin gets the next id: no conflict left a gap.
	if got := register(t, url2, newIdentity(t, identity.Ed25519)).TwinID; got != rounds+1 {
		t.Errorf("twin id after %d conflicting pairs: %d, want %d", rounds, got, rounds+1)
	}
}

// poll long-polls the feed of base from since and returns the answer and
// how long it took.
func poll(t *testing.T, base string, since uint64) (changesResponse, time.Duration) {
	start := time.Now()
	a := call(t, http.MethodGet, fmt.Sprintf("%s/v1/accounts/changes?since=%d&wait=30", base, since), nil, nil)
	if a.status != http.StatusOK {
		t.Errorf("feed: %d %s", a.status, a.body)
	}
	var r changesResponse
	json.Unmarshal(a.body, &r)
	return r, time.Since(start)
}

// TestPostgresFeedAcrossInstances checks that a change made through one
// registrar wakes a watcher of the other within a second.
func TestPostgresFeedAcrossInstances(t *testing.T) {
	// A poll slower than the test's bound: only the notification can
	// make it.
	url1, url2, _, _ := twoInstances(t, &PostgresOptions{Poll: time.Minute})
	owner := newIdentity(t, identity.Ed25519)
	twin := register(t, url1, owner).TwinID

	for i, change := range []func(){
		func() { register(t, url1, newIdentity(t, identity.Sr25519)) },
		func() {
			a := call(t, http.MethodPatch, fmt.Sprintf("%s/v1/accounts/%d", url1, twin), `{"relays": ["r2.example"]}`, authHeaderFor(owner, twin, time.Now()))
			if a.status != http.StatusOK {
				t.Errorf("update: %d %s", a.status, a.body)
			}
		},
	} {
		since := uint64(i + 1)
		done := make(chan changesResponse, 1)
		go func() { r, _ := poll(t, url2, since); done <- r }()
		// The poll must be waiting on instance 2 before the change.
		time.Sleep(200 * time.Millisecond)
		changed := time.Now()
		change()
		select {
		case r := <-done:
			if d := time.Since(changed); d > time.Second {
				t.Errorf("change %d reached the watcher of instance 2 after %s", i, d)
			}
			if r.Seq != since+1 || len(r.Changes) != 1 {
				t.Errorf("change %d: watcher got %+v", i, r)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("change %d never reached the watcher of instance 2", i)
		}
	}

	// A Client watching instance 2, as relays and peers do, drops its
	// cached copy when the twin changes through instance 1.
	ctx := context.Background()
	c := NewClient(url2, &ClientOptions{CacheTTL: time.Hour, NegativeCacheTTL: time.Hour})
	startWatch(t, c)
	eventually(t, 10*time.Second, "the cache to hold the twin", func() bool {
		got, err := c.Twin(ctx, twin)
		return err == nil && slices.Equal(got.Relays, []string{"r2.example"})
	})
	time.Sleep(200 * time.Millisecond) // let Watch's long poll reach instance 2
	changed := time.Now()
	if _, err := NewClient(url1, nil).Update(ctx, owner, twin, []string{"r3.example"}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the change to reach the watching client", func() bool {
		got, err := c.Twin(ctx, twin)
		return err == nil && slices.Equal(got.Relays, []string{"r3.example"})
	})
	if d := time.Since(changed); d > time.Second {
		t.Errorf("the watching client of instance 2 saw the change after %s", d)
	}
}

// TestPostgresLostNotification makes a change without NOTIFY, as if the
// notification were lost: the fallback poll still wakes the watcher.
func TestPostgresLostNotification(t *testing.T) {
	db := pgtest.Shared(t).NewDatabase(t)
	s := openPostgresURL(t, db, &PostgresOptions{Poll: 200 * time.Millisecond})
	hs, _ := startServer(t, &Options{Store: s}, nil)
	owner := newIdentity(t, identity.Ed25519)
	twin := register(t, hs.URL, owner).TwinID

	done := make(chan changesResponse, 1)
	go func() { r, _ := poll(t, hs.URL, 1); done <- r }()
	time.Sleep(100 * time.Millisecond)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// What Update writes, minus the pg_notify.
	_, err = conn.Exec(ctx, `WITH c AS (UPDATE registrar_counters SET last_seq = last_seq + 1 RETURNING last_seq),
		a AS (UPDATE registrar_accounts SET relays = '{r9.example}', seq = (SELECT last_seq FROM c) WHERE twin_id = $1)
		UPDATE registrar_changes SET seq = (SELECT last_seq FROM c) WHERE twin_id = $1`, int64(twin))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if want := []Change{{2, twin}}; !slices.Equal(r.Changes, want) {
			t.Errorf("watcher got %+v, want %v", r, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a change without notification never woke the watcher")
	}
}

// TestPostgresMigrations starts several registrars at once on a fresh
// database, then restarts them: the schema is applied once and data stays.
func TestPostgresMigrations(t *testing.T) {
	ctx := context.Background()
	db := pgtest.Shared(t).NewDatabase(t)
	var wg sync.WaitGroup
	stores := make([]*PostgresStore, 4)
	for i := range stores {
		wg.Go(func() {
			s, err := OpenPostgres(ctx, db, nil)
			if err != nil {
				t.Errorf("concurrent start %d: %v", i, err)
				return
			}
			stores[i] = s
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if _, err := stores[0].Create(ctx, testTwin(1)); err != nil {
		t.Fatal(err)
	}
	for _, s := range stores {
		s.Close()
	}
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var rows, version int
	if err := conn.QueryRow(ctx, `SELECT count(*), max(version) FROM registrar_schema_migrations`).Scan(&rows, &version); err != nil || rows != 1 || version != 1 {
		t.Fatalf("schema_migrations: %d rows up to version %d, %v; want one row, version 1", rows, version, err)
	}

	s := openPostgresURL(t, db, nil)
	if v, err := s.SchemaVersion(ctx); err != nil || v != 1 {
		t.Errorf("version after restart: %d, %v", v, err)
	}
	if a, err := s.Get(ctx, 1); err != nil || a.PublicKey[0] != 1 {
		t.Errorf("twin 1 after restart: %+v, %v", a, err)
	}
	if a, err := s.Create(ctx, testTwin(2)); err != nil || a.ID != 2 || a.Seq != 2 {
		t.Errorf("create after restart: %+v, %v; want twin 2 seq 2", a, err)
	}
	s.Close()

	// A database migrated by a newer registrar is refused.
	if _, err := conn.Exec(ctx, `INSERT INTO registrar_schema_migrations (version, name) VALUES (99, 'future.sql')`); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenPostgres(ctx, db, nil); err == nil || !strings.Contains(err.Error(), "version 99, newer than this registrar") {
		t.Errorf("open of a newer schema: %v", err)
	}
}

// TestPostgresOpenErrors checks the errors of bad URLs and an unreachable
// server: they name the address and never the password.
func TestPostgresOpenErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String() // nobody listens once closed
	ln.Close()
	const secret = "s3cret-pw"
	tests := []struct {
		url  string
		want string
	}{
		{"postgres://rmb:" + secret + "@127.0.0.1:notaport/db", "bad PostgreSQL URL"},
		{"postgres://rmb:" + secret + "@" + closed + "/db?connect_timeout=5", "PostgreSQL at " + closed},
		{"postgres://rmb@" + closed + "/db?password=" + secret + "&connect_timeout=5", "PostgreSQL at " + closed},
		{"postgres://rmb:" + secret + "@127.0.0.1/db?sslmode=bogus", "bad PostgreSQL URL"},
		{"mysql://rmb:" + secret + "@127.0.0.1/db", "bad PostgreSQL URL"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			s, err := OpenPostgres(context.Background(), tt.url, nil)
			if err == nil {
				s.Close()
				t.Fatalf("OpenPostgres(%s) succeeded", RedactURL(tt.url))
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), secret) {
				t.Errorf("error %q: want it to contain %q and not the password", err, tt.want)
			}
		})
	}
	if got := RedactURL("postgres://rmb:" + secret + "@h/db?password=" + secret); strings.Contains(got, secret) {
		t.Errorf("RedactURL = %s", got)
	}
}

// TestPostgresServerRestart restarts PostgreSQL under a running registrar:
// requests meanwhile get 503, and everything works again once it is back.
func TestPostgresServerRestart(t *testing.T) {
	srv := pgtest.Start(t)
	db := srv.NewDatabase(t)
	s1 := openPostgresURL(t, db, nil)
	s2 := openPostgresURL(t, db, nil)
	hs1, _ := startServer(t, &Options{Store: s1}, nil)
	hs2, _ := startServer(t, &Options{Store: s2}, nil)
	owner := newIdentity(t, identity.Ed25519)
	register(t, hs1.URL, owner)

	srv.Stop()
	for _, q := range []string{"/v1/accounts?twin_id=1", "/v1/accounts/changes?since=0"} {
		a := call(t, http.MethodGet, hs1.URL+q, nil, nil)
		if a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") == "" {
			t.Errorf("GET %s while PostgreSQL is down: %d %s, want 503 with Retry-After", q, a.status, a.body)
		} else if msg := a.errorText(t); strings.Contains(msg, srv.Addr()) {
			t.Errorf("503 answer names the database: %s", msg)
		}
	}
	if a := call(t, http.MethodPost, hs1.URL+"/v1/accounts", createBody(newIdentity(t, identity.Ed25519), time.Now().Unix(), nil), nil); a.status != http.StatusServiceUnavailable {
		t.Errorf("POST while PostgreSQL is down: %d %s, want 503", a.status, a.body)
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "lookups to work again", func() bool {
		return call(t, http.MethodGet, hs1.URL+"/v1/accounts?twin_id=1", nil, nil).status == http.StatusOK
	})
	// The watcher of instance 2 hears of a change through instance 1
	// again (its listener reconnected, or the poll caught it).
	done := make(chan changesResponse, 1)
	go func() { r, _ := poll(t, hs2.URL, 1); done <- r }()
	if got := register(t, hs1.URL, newIdentity(t, identity.Sr25519)).TwinID; got != 2 {
		t.Errorf("twin id after the restart: %d, want 2 (the failed create left no gap)", got)
	}
	select {
	case r := <-done:
		if want := []Change{{2, 2}}; !slices.Equal(r.Changes, want) {
			t.Errorf("watcher of instance 2 got %+v, want %v", r, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the watcher of instance 2 never heard of the change after the restart")
	}
}

// BenchmarkPostgresStore measures the store calls a registrar makes, on
// the local test server (fsync off): a registration, a lookup, a read of
// the change feed.
func BenchmarkPostgresStore(b *testing.B) {
	ctx := context.Background()
	s := openPostgres(b, nil)
	twin := func(i int) Twin {
		pub := make([]byte, 32)
		copy(pub, fmt.Appendf(nil, "%d", i))
		return Twin{PublicKey: pub, Relays: []string{"r1.example"}}
	}
	n := 0
	b.Run("Create", func(b *testing.B) {
		for b.Loop() {
			n++
			if _, err := s.Create(ctx, twin(n)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("CreateParallel", func(b *testing.B) {
		var mu sync.Mutex
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				mu.Lock()
				n++
				t := twin(n)
				mu.Unlock()
				if _, err := s.Create(ctx, t); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("Get", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				if _, err := s.Get(ctx, uint32(i%n+1)); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("Changes", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := s.Changes(ctx, uint64(n-10), 1000); err != nil {
				b.Fatal(err)
			}
		}
	})
}
