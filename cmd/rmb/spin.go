package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// isTerminal reports whether w is a character device (a terminal), by
// os.File.Stat: golang.org/x/term is not a dependency, and a false
// positive (/dev/null) costs nothing.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

var spinFrames = []rune("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")

// spin shows a spinner with what and the time waited on w while a call
// waits, when w is a terminal; elsewhere it writes nothing (no escape
// codes in a log or a pipe). The returned stop erases the line.
func spin(w io.Writer, what string) (stop func()) {
	if !isTerminal(w) {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		start := time.Now()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-done:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-t.C:
				fmt.Fprintf(w, "\r\033[K%c %s (%s)", spinFrames[i%len(spinFrames)], what, time.Since(start).Truncate(100*time.Millisecond))
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}
