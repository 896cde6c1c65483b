// Package harness runs the real RMB binaries (rmb-registrar, rmb-relay,
// rmb-peer) and redis-server on 127.0.0.1 for the fault, hostile-input and
// soak suites under test/, and drives them the way real programs do: bots
// that push docs/protocol.md §9 JSON with go-redis and an echo service that pops
// its command queue and answers on msgbus.system.reply.
//
// Build compiles the binaries once into a directory; a Cluster starts and
// owns processes (every process is killed when the Cluster closes, and
// with Pdeathsig when the test binary dies). Proc.Kill is kill -9;
// Proc.Start after it restarts the same command on the same ports.
//
// Tally turns what a Bot pushed and received, what the Echo service saw
// and the dead-letter list into the numbers the suites assert on:
// accepted, answered, errors (by code), dead-lettered, lost, duplicate
// responses and duplicate deliveries to the service.
package harness
