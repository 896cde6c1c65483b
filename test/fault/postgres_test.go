package fault

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/pgtest"
	"github.com/rmb-go/rmb/test/harness"
)

// TestPostgresRestart stops the PostgreSQL server under a registrar on
// PostgreSQL and starts it again: the registrar answers 503 meanwhile,
// relays and peers run on their caches, and the registrar serves again
// once the database is back, without a restart of its own.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	pg := pgtest.Start(t)
	e := startBus(t, ctx, busOptions{topology: oneRelay, registrarDB: pg.NewDatabase(t)})
	lookup := func(want int) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/accounts?twin_id=%d", e.reg.URL, e.a.Twin), nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			return fmt.Errorf("lookup of twin %d: status %d, want %d", e.a.Twin, resp.StatusCode, want)
		}
		return nil
	}
	tally := e.run(ctx, func() {
		pg.Stop()
		if err := lookup(http.StatusServiceUnavailable); err != nil {
			t.Errorf("while PostgreSQL is down: %v", err)
		}
		time.Sleep(downtime)
		if err := pg.Restart(); err != nil {
			t.Errorf("restart PostgreSQL: %v", err)
			return
		}
		if err := harness.WaitFor(ctx, 30*time.Second, func() error { return lookup(http.StatusOK) }); err != nil {
			t.Errorf("registrar after PostgreSQL is back: %v\n%s", err, e.reg.Tail(20))
		}
	})
	e.expectClean(ctx, tally)
}
