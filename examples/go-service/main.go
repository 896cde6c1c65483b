// Command go-service runs a twin entirely in-process with pkg/peer: no
// rmb-peer, no Redis. It serves "greet" and, given --call, calls another
// twin's "greet" and prints the answer.
//
//	go run ./examples/go-service --relay ws://127.0.0.1:8080 --registrar http://127.0.0.1:8090
//	go run ./examples/go-service --relay ... --registrar ... --call 7
//
// The secret comes from RMB_MNEMONIC (a fresh one is made when it is empty).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"time"

	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/registrar"
)

func main() {
	relayURL := flag.String("relay", "ws://127.0.0.1:8080", "relay WebSocket URL")
	registrarURL := flag.String("registrar", "http://127.0.0.1:8090", "registrar URL")
	call := flag.String("call", "", "twin id to greet, then exit")
	flag.Parse()
	if err := run(*relayURL, *registrarURL, *call); err != nil {
		fmt.Fprintln(os.Stderr, "go-service:", err)
		os.Exit(1)
	}
}

func run(relayURL, registrarURL, call string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	secret := os.Getenv("RMB_MNEMONIC")
	if secret == "" {
		var err error
		if secret, err = identity.NewMnemonic(); err != nil {
			return err
		}
	}
	id, err := identity.FromSecret(secret, identity.Ed25519)
	if err != nil {
		return err
	}
	p, err := peer.New(&peer.Options{
		Identity:  id,
		Relays:    []string{relayURL},
		Registrar: registrar.NewClient(registrarURL, nil),
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	// A service is a function: the payload in, the answer out.
	p.Handle("greet", func(ctx context.Context, req *peer.Request) ([]byte, error) {
		return fmt.Appendf(nil, "hello %s, from twin %d", req.Data, p.Twin()), nil
	})
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	select {
	case <-p.Ready():
	case err := <-done:
		return err
	}
	fmt.Printf("twin %d serving greet\n", p.Twin())

	if call == "" {
		return <-done
	}
	dst, err := strconv.ParseUint(call, 10, 32)
	if err != nil {
		return fmt.Errorf("--call %q: not a twin id", call)
	}
	out, err := p.Call(ctx, []uint32{uint32(dst)}, "greet", []byte("world"), &peer.CallOptions{TTL: 30 * time.Second})
	if err != nil {
		return err
	}
	for _, r := range out {
		if r.Err != nil {
			return r.Err
		}
		fmt.Printf("twin %d answered: %s\n", r.Source, r.Data)
	}
	stop()
	<-done
	return nil
}
