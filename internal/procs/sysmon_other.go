//go:build !unix

package procs

// reexec is not available here: the runtime's default sysmon stays.
func reexec(string) error { return nil }
