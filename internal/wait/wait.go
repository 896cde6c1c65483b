// Package wait polls until something is ready: a function that stops
// failing, an HTTP endpoint that answers 200. The demo and the integration
// tests use it to wait for the processes they start.
package wait

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// For calls f every 50 ms until it succeeds, ctx ends or timeout passes,
// and returns f's last error (wrapped with ctx's error when ctx ended).
func For(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// HTTP polls url with GET until it answers 200.
func HTTP(ctx context.Context, url string, timeout time.Duration) error {
	return For(ctx, timeout, func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s answered %s", url, resp.Status)
		}
		return nil
	})
}
