//go:build !unix

package procs

import "time"

// cpuTime is not read here: Adapt does nothing.
func cpuTime() time.Duration { return -1 }
