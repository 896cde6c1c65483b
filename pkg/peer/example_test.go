package peer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/registrar"
	"github.com/rmb-go/rmb/pkg/relay"
)

// bus starts a registrar and a relay in this process on 127.0.0.1, so the
// examples run anywhere; a deployment runs rmb-registrar and rmb-relay.
func bus() (registrarURL, relayURL string, stop func()) {
	reg := registrar.NewServer(nil)
	rs := httptest.NewServer(reg.Handler())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	r, err := relay.New(&relay.Options{
		Domains:   []string{ln.Addr().String()},
		Directory: registrar.NewClient(rs.URL, nil),
	})
	if err != nil {
		panic(err)
	}
	hs := &http.Server{Handler: r.Handler()}
	go hs.Serve(ln)
	return rs.URL, "ws://" + ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.Shutdown(ctx)
		hs.Close()
		reg.Close()
		rs.Close()
	}
}

// start runs a peer for the twin of seed byte b until ctx ends and waits
// until it is registered and connected.
func start(ctx context.Context, registrarURL, relayURL string, b byte, serve func(*peer.Peer)) *peer.Peer {
	id, err := identity.FromSeed(bytes.Repeat([]byte{b}, identity.SeedSize), identity.Ed25519)
	if err != nil {
		panic(err)
	}
	p, err := peer.New(&peer.Options{
		Identity:  id,
		Relays:    []string{relayURL},
		Registrar: registrar.NewClient(registrarURL, nil),
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		panic(err)
	}
	if serve != nil {
		serve(p)
	}
	go p.Run(ctx)
	<-p.Ready()
	for p.Connected() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

// Two twins on one relay: one serves "greet", the other calls it.
func Example() {
	registrarURL, relayURL, stop := bus()
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	server := start(ctx, registrarURL, relayURL, 1, func(p *peer.Peer) {
		p.Handle("greet", func(ctx context.Context, req *peer.Request) ([]byte, error) {
			return []byte("hello " + string(req.Data)), nil
		})
	})
	client := start(ctx, registrarURL, relayURL, 2, nil)

	answers, err := client.Call(ctx, []uint32{server.Twin()}, "greet", []byte("world"), &peer.CallOptions{TTL: 30 * time.Second})
	if err != nil {
		panic(err)
	}
	for _, a := range answers {
		fmt.Printf("twin %d answered %q\n", a.Source, a.Data)
	}
	// Output: twin 1 answered "hello world"
}

// A peer is made with New and runs with Run; Ready is closed once the twin
// is registered (on the first start) or found.
func ExampleNew() {
	registrarURL, relayURL, stop := bus()
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	id, err := identity.FromSecret("bottom drive obey lake curtain smoke basket hold race lonely fit walk", identity.Sr25519)
	if err != nil {
		panic(err)
	}
	p, err := peer.New(&peer.Options{
		Identity:  id,
		Relays:    []string{relayURL},
		Registrar: registrar.NewClient(registrarURL, nil),
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		panic(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	<-p.Ready()
	fmt.Println("twin", p.Twin())

	cancel() // Run returns when its context ends
	<-done
	// Output: twin 1
}

// A Handler that returns a *peer.Error answers with its code; the caller
// finds it in Response.Err. Any other error answers with code 500.
func ExamplePeer_Handle() {
	registrarURL, relayURL, stop := bus()
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	server := start(ctx, registrarURL, relayURL, 1, func(p *peer.Peer) {
		p.Handle("calc.div", func(ctx context.Context, req *peer.Request) ([]byte, error) {
			a, b, _ := strings.Cut(string(req.Data), "/")
			if b == "0" {
				return nil, &peer.Error{Code: 400, Message: "division by zero"}
			}
			return []byte(a + "/" + b), nil
		})
		p.Handle("fail", func(ctx context.Context, req *peer.Request) ([]byte, error) {
			return nil, errors.New("something broke")
		})
	})
	client := start(ctx, registrarURL, relayURL, 2, nil)

	for _, c := range []struct{ cmd, data string }{{"calc.div", "1/0"}, {"fail", ""}} {
		answers, err := client.Call(ctx, []uint32{server.Twin()}, c.cmd, []byte(c.data), &peer.CallOptions{TTL: 30 * time.Second})
		if err != nil {
			panic(err)
		}
		fmt.Println(c.cmd, answers[0].Err.Code)
	}
	// Output:
	// calc.div 400
	// fail 500
}

// Call sends one request to several twins and returns one Response per
// destination; for a twin that is not in the registrar this peer answers
// itself, with code 103.
func ExamplePeer_Call() {
	registrarURL, relayURL, stop := bus()
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	echo := func(p *peer.Peer) {
		p.Handle("echo", func(ctx context.Context, req *peer.Request) ([]byte, error) { return req.Data, nil })
	}
	a := start(ctx, registrarURL, relayURL, 1, echo)
	b := start(ctx, registrarURL, relayURL, 2, echo)
	client := start(ctx, registrarURL, relayURL, 3, nil)

	answers, err := client.Call(ctx, []uint32{a.Twin(), b.Twin(), 99}, "echo", []byte("ping"),
		&peer.CallOptions{TTL: 30 * time.Second})
	if err != nil {
		panic(err)
	}
	byTwin := map[uint32]string{}
	for _, r := range answers {
		if r.Err != nil {
			byTwin[r.Source] = fmt.Sprint("error ", r.Err.Code)
		} else {
			byTwin[r.Source] = string(r.Data)
		}
	}
	fmt.Println(len(answers), byTwin[1], byTwin[2], byTwin[99])
	// Output: 3 ping ping error 103
}
