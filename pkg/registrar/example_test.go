package registrar_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"

	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// A registrar over HTTP, a twin registering itself, and a lookup.
func Example() {
	ctx := context.Background()

	srv := registrar.NewServer(&registrar.Options{Store: registrar.NewMemStore()})
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	defer srv.Close() // answers waiting change-feed polls first

	id, err := identity.FromSecret("bottom drive obey lake curtain smoke basket hold race lonely fit walk", identity.Sr25519)
	if err != nil {
		panic(err)
	}
	c := registrar.NewClient(hs.URL, nil)
	twin, err := c.Register(ctx, id, []string{"relay.example"})
	if err != nil {
		panic(err)
	}
	got, err := c.Twin(ctx, twin.ID)
	if err != nil {
		panic(err)
	}
	fmt.Println(got.ID, got.Relays, len(got.E2EKey))

	_, err = c.Twin(ctx, 42)
	fmt.Println(errors.Is(err, registrar.ErrNotFound))
	// Output:
	// 1 [relay.example] 33
	// true
}

// Watch keeps a long-lived client's cache fresh; run it for the life of the
// client.
func ExampleClient_Watch() {
	srv := registrar.NewServer(nil)
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	defer srv.Close()

	ctx, stop := context.WithCancel(context.Background())
	c := registrar.NewClient(hs.URL, nil)
	done := make(chan error)
	go func() { done <- c.Watch(ctx) }()

	// ... c.Twin(ctx, id) on the hot path ...

	stop()
	fmt.Println(<-done)
	// Output: context canceled
}
