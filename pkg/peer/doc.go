// Package peer is an RMB peer inside a Go program: it holds a twin's
// identity, keeps WebSocket connections to its relays, and signs, encrypts,
// sends, verifies and decrypts envelopes. Serve commands with Handle and
// call other twins with Call:
//
//	id, _ := identity.FromSecret(mnemonic, identity.Sr25519)
//	p, err := peer.New(&peer.Options{
//		Identity:  id,
//		Relays:    []string{"wss://relay.example.com"},
//		Registrar: registrar.NewClient("https://registrar.example.com", nil),
//	})
//	if err != nil { ... }
//	p.Handle("greet", func(ctx context.Context, req *peer.Request) ([]byte, error) {
//		return []byte("hello " + string(req.Data)), nil
//	})
//	go p.Run(ctx) // registers the twin on its first start
//	<-p.Ready()
//	answers, err := p.Call(ctx, []uint32{55}, "greet", []byte("world"), nil)
//	for _, a := range answers {
//		if a.Err != nil { ... } // a.Err.Code: 408 when no answer came in time
//		fmt.Println(a.Source, string(a.Data))
//	}
//
// Call returns one Response per destination: the answer or an error
// answer (*Error, with the codes of docs/protocol.md §9). A Handler that
// returns a *Error answers with its code, any other error with 500.
//
// With Options.Redis the peer also serves the Redis JSON API of
// docs/protocol.md §9, as the rmb-peer program does: programs in any
// language push requests on msgbus.system.local and serve commands from
// msgbus.<cmd>. Options.Policy says which twins may call which commands;
// Registry exposes the peer's Prometheus metrics.
//
// How it works inside (start-up, relay connections and failover, the
// Redis lists and their crash safety, the order of verification, batching,
// re-sending and the bounds that keep anything from vanishing) is in
// docs/internals.md, "The peer".
package peer
