// Package bench is the load tool behind `rmb bench`: it drives a relay (or a
// whole bus of peers) with real clients over loopback and reports delivered
// messages per second, loss and latency percentiles.
//
// Relay mode: N sender and N receiver WebSocket sessions, sender i sending
// to receiver i. Every envelope is built and signed before the clock starts
// (uid "<sender>-<seq>"), so the run measures the relay and the transport,
// not signing. Receivers read uids with envelope.ReadRouting to count
// unique deliveries and to look up each envelope's send time.
package bench
