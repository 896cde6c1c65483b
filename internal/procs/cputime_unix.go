//go:build unix

package procs

import (
	"syscall"
	"time"
)

// cpuTimeKnown: CPUTime reads the process's CPU time here.
const cpuTimeKnown = true

// CPUTime is the user and system CPU time this process used so far (0
// where it cannot be read).
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
