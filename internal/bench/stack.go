package bench

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/rmb-go/rmb/pkg/registrar"
	"github.com/rmb-go/rmb/pkg/relay"
)

// stack is an in-process registrar and relay on 127.0.0.1.
type stack struct {
	reg    *registrar.Client
	regURL string
	relay  *relay.Relay
	domain string // the relay's host:port
	close  func()
}

func startStack(relayOpts relay.Options) (*stack, error) {
	regL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	regHTTP := &http.Server{Handler: registrar.NewServer(nil).Handler()}
	go regHTTP.Serve(regL)
	reg := registrar.NewClient("http://"+regL.Addr().String(), nil)

	relayL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		regHTTP.Close()
		return nil, err
	}
	domain := relayL.Addr().String()
	relayOpts.Domains = []string{domain}
	relayOpts.Directory = reg
	rl, err := relay.New(&relayOpts)
	if err != nil {
		regHTTP.Close()
		relayL.Close()
		return nil, err
	}
	relayHTTP := &http.Server{Handler: rl.Handler()}
	go relayHTTP.Serve(relayL)
	return &stack{reg: reg, regURL: "http://" + regL.Addr().String(), relay: rl, domain: domain, close: func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rl.Shutdown(ctx)
		relayHTTP.Close()
		regHTTP.Close()
	}}, nil
}
