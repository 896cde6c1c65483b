package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/rmb-go/rmb/pkg/redisapi"
)

// errTooMuch stops copying a command's output past its bound.
var errTooMuch = errors.New("output bound reached")

// boundedBuffer keeps at most max bytes; a write past that fails, which
// closes the pipe so the command does not run on for nothing.
type boundedBuffer struct {
	buf    bytes.Buffer // not embedded: its ReadFrom would skip the bound
	max    int
	over   bool
	onOver func() // called once, when a write goes past max
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if b.buf.Len()+len(p) > b.max {
		if !b.over && b.onOver != nil {
			b.onOver()
		}
		b.over = true
		b.buf.Write(p[:b.max-b.buf.Len()])
		return 0, errTooMuch
	}
	return b.buf.Write(p)
}

// execHandler answers each request with the output of command, run by
// /bin/sh -c, as nats reply --command does: the request's payload is its
// stdin, its stdout the answer. A non-zero exit is an error answer with
// the first line of stderr; output beyond maxOut bytes is an error; the
// command is killed (its process group) after timeout or at the
// request's deadline, whichever comes first. $RMB_SOURCE, $RMB_COMMAND
// and $RMB_REF name the request.
func execHandler(command string, timeout time.Duration, maxOut int) redisapi.Handler {
	return func(ctx context.Context, req *redisapi.IncomingRequest, payload []byte) ([]byte, error) {
		d := timeout
		if req.Now > 0 && req.Expiration > 0 {
			d = min(d, time.Until(time.Unix(req.Now+int64(req.Expiration), 0)))
		}
		if d <= 0 {
			return nil, &redisapi.Error{Code: 408, Message: "the request's deadline passed before it was served"}
		}
		cctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		cmd := exec.CommandContext(cctx, "/bin/sh", "-c", command)
		cmd.Stdin = bytes.NewReader(payload)
		stdout := &boundedBuffer{max: maxOut, onOver: cancel} // kill it: no one reads on
		stderr := &boundedBuffer{max: 4096}
		cmd.Stdout, cmd.Stderr = stdout, stderr
		cmd.Env = append(os.Environ(), "RMB_SOURCE="+req.Source, "RMB_COMMAND="+req.Command, "RMB_REF="+req.Ref)
		// Its own process group, killed whole: a pipeline's children too.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = time.Second
		err := cmd.Run()
		var exit *exec.ExitError
		switch {
		case stdout.over:
			return nil, &redisapi.Error{Code: 500, Message: fmt.Sprintf("the answer is longer than %d bytes (--exec-max-output)", maxOut)}
		case cctx.Err() != nil && ctx.Err() == nil:
			return nil, &redisapi.Error{Code: 504, Message: fmt.Sprintf("the command took longer than %s", d.Round(time.Millisecond))}
		case errors.As(err, &exit):
			msg := fmt.Sprintf("exit status %d", exit.ExitCode())
			if line, _, _ := strings.Cut(strings.TrimSpace(stderr.buf.String()), "\n"); line != "" {
				msg += ": " + line
			}
			return nil, &redisapi.Error{Code: 500, Message: msg}
		case err != nil:
			return nil, &redisapi.Error{Code: 500, Message: "cannot run the command: " + err.Error()}
		}
		return stdout.buf.Bytes(), nil
	}
}
