package procs

import (
	"fmt"
	"os"
	"strings"
)

// quietSchedtrace is the GODEBUG setting QuietSysmon adds: the largest
// schedtrace period, in milliseconds (24.8 days).
const quietSchedtrace = "schedtrace=2147483647"

// QuietSysmon keeps the Go runtime's monitor thread (sysmon) from sleeping
// deeply every time the process goes idle, which on a process woken a few
// times per message costs more thread switches than the message itself.
// Call it first in main: it runs the program again, in the same process
// (exec), with schedtrace=2147483647 added to GODEBUG, unless GODEBUG
// sets schedtrace already. GODEBUG=schedtrace=0 in the environment keeps
// the runtime's default. Where exec is not available, or fails, it does
// nothing but say so on standard error.
//
// Why: sysmon sleeps deeply once all Ps are idle, and the first system
// call after that wakes it (golang/go#18236); it then polls every 20 µs
// while the process is busy. A process that wakes up for each message
// pays a sysmon wake-up and a few polls every time: on the project's
// virtual machine, 9 of the 16 thread switches per round trip of the two
// peers, and 8 of the 14 of the relay's process. The only switch the
// runtime offers is schedtrace: with it set, sysmon never sleeps deeply
// and backs off to 10 ms polls while nothing happens. Its side effect,
// a scheduler line on standard error once per period (at start when the
// host has been up longer than that), is rare enough to live with.
// docs/benchmarks.md has the figures.
func QuietSysmon() {
	godebug, set := os.LookupEnv("GODEBUG")
	if set && hasSetting(godebug, "schedtrace") {
		return
	}
	if godebug != "" {
		godebug += ","
	}
	godebug += quietSchedtrace
	if err := reexec(godebug); err != nil {
		fmt.Fprintf(os.Stderr, "%s: running with the Go runtime's default sysmon: cannot run again with GODEBUG=%s: %v\n",
			os.Args[0], quietSchedtrace, err)
	}
}

// hasSetting reports whether godebug (GODEBUG's value) sets key.
func hasSetting(godebug, key string) bool {
	for kv := range strings.SplitSeq(godebug, ",") {
		if k, _, ok := strings.Cut(kv, "="); ok && strings.TrimSpace(k) == key {
			return true
		}
	}
	return false
}

// environ is os.Environ with GODEBUG set to godebug.
func environ(godebug string) []string {
	env := []string{"GODEBUG=" + godebug}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	return env
}
