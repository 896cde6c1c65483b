//go:build !unix

package procs

import "time"

// cpuTimeKnown: not here, so Adapt does nothing.
const cpuTimeKnown = false

// CPUTime is 0 here: the process's CPU time is not read.
func CPUTime() time.Duration { return 0 }
