package peer

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rmb-go/rmb/pkg/redisapi"
)

// Command names.
//
// A request from a remote twin names a command, and the peer pushes it on
// the Redis list msgbus.<cmd>. The name is chosen by the sender, so it is
// checked before it becomes a key: CheckCommand refuses names that are
// empty, longer than MaxCommandLen bytes, hold a character outside
// CommandChars, or start with a reserved prefix. The reserved prefixes
// keep remote requests off the lists that are not command queues:
//
//	system.   msgbus.system.*: the peer's own lists (local, reply,
//	          deadletter, pending, the processing lists)
//	reply.    msgbus.reply.*: the ret queues of rmb-go's clients
//	          (redisapi.Client, rmb call, examples/shell)
//
// A client that picks its ret queue itself should pick a name outside
// msgbus. (a bare UUID, as the reference clients do) or under
// msgbus.reply.; see docs/protocol.md. A client that picks another
// msgbus.<x> is guarded too, while its request waits: the peer refuses
// remote requests for command x until the request's deadline plus
// retGrace (guardRet).

// MaxCommandLen is the longest command name accepted, in bytes.
const MaxCommandLen = 128

// CommandChars are the characters a command name may hold: ASCII letters
// and digits and these punctuation marks. No space, no control
// character, no quote, no glob or Redis pattern character.
const CommandChars = "._-/:@+"

// ReservedPrefixes are the command name prefixes remote twins may not call
// (also the bare names without the dot).
var ReservedPrefixes = []string{"system.", "reply."}

// ErrBadCommand means a command name was refused by CheckCommand.
var ErrBadCommand = errors.New("bad command name")

// ErrReservedCommand means a command name starts with a reserved prefix.
var ErrReservedCommand = errors.New("reserved command name")

// CheckCommand reports whether a remote twin may name cmd: an error
// wrapping ErrBadCommand or ErrReservedCommand when not. The error text
// quotes cmd only when it is short and printable.
func CheckCommand(cmd string) error {
	switch {
	case cmd == "":
		return fmt.Errorf("%w: empty", ErrBadCommand)
	case len(cmd) > MaxCommandLen:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrBadCommand, len(cmd), MaxCommandLen)
	}
	for i := 0; i < len(cmd); i++ {
		if c := cmd[i]; !commandChar(c) {
			return fmt.Errorf("%w: byte 0x%02x at %d (allowed: letters, digits and %q)", ErrBadCommand, c, i, CommandChars)
		}
	}
	for _, r := range ReservedPrefixes {
		if strings.HasPrefix(cmd, r) || cmd == strings.TrimSuffix(r, ".") {
			return fmt.Errorf("%w: %q (prefix %q is not for remote twins)", ErrReservedCommand, cmd, r)
		}
	}
	return nil
}

func commandChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte(CommandChars, c) >= 0
}

// Globs.
//
// Policy rules and the --serve list name commands by glob patterns: '*'
// matches any run of characters, '/' and '.' included (so "calc.*"
// matches "calc.add" and "calc.v2/add", and "*" matches every command),
// '?' matches any one character, and every other character matches
// itself. There are no character classes and no escapes: '[', ']' and
// '\' are refused, so a pattern never means something other than what it
// reads as.

// CheckGlob reports whether pattern is a valid glob (see Globs), as
// Options.Serve and policy rules take them.
func CheckGlob(pattern string) error { return checkGlob(pattern) }

// checkGlob reports whether pattern is a valid glob.
func checkGlob(pattern string) error {
	if pattern == "" {
		return errors.New("empty pattern")
	}
	if i := strings.IndexAny(pattern, `[]\`); i >= 0 {
		return fmt.Errorf("pattern %q: %q is not supported (only * and ? are special)", pattern, pattern[i])
	}
	return nil
}

// matchGlob reports whether name matches pattern (see Globs). It runs in
// O(len(pattern)·len(name)) at worst, with no recursion.
func matchGlob(pattern, name string) bool {
	p, n := 0, 0
	star, mark := -1, 0 // position after the last '*', and the name position it took
	for n < len(name) {
		switch {
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == name[n]) && pattern[p] != '*':
			p++
			n++
		case p < len(pattern) && pattern[p] == '*':
			p++
			star, mark = p, n
		case star >= 0:
			mark++
			p, n = star, mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// globList is a list of globs; an empty list matches nothing.
type globList []string

func parseGlobs(patterns []string) (globList, error) {
	for _, g := range patterns {
		if err := checkGlob(g); err != nil {
			return nil, err
		}
	}
	return globList(patterns), nil
}

func (l globList) match(name string) bool {
	for _, g := range l {
		if matchGlob(g, name) {
			return true
		}
	}
	return false
}

// retGrace is how long after its request's deadline a ret queue stays
// guarded: the answer may still be pushed a little later.
const retGrace = time.Minute

// retGuard holds the ret queues of local requests that a command name
// could reach (msgbus.<x>, x a valid command name), each until when.
type retGuard struct {
	mu    sync.Mutex
	until map[string]time.Time
}

// guardRet keeps remote requests off ret until deadline plus retGrace,
// when ret is a list a command name could reach.
func (p *Peer) guardRet(ret string, deadline time.Time) {
	x, ok := strings.CutPrefix(ret, redisapi.CommandPrefix)
	if !ok || CheckCommand(x) != nil {
		return
	}
	g := &p.rets
	until := deadline.Add(retGrace)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.until == nil {
		g.until = make(map[string]time.Time)
	}
	if until.After(g.until[ret]) {
		g.until[ret] = until
	}
}

// isRet reports whether queue is a guarded ret queue.
func (p *Peer) isRet(queue string, now time.Time) bool {
	g := &p.rets
	g.mu.Lock()
	defer g.mu.Unlock()
	until, ok := g.until[queue]
	if ok && now.After(until) {
		delete(g.until, queue)
		return false
	}
	return ok
}

// sweepRets forgets the guards whose time has passed.
func (p *Peer) sweepRets(now time.Time) {
	g := &p.rets
	g.mu.Lock()
	defer g.mu.Unlock()
	for q, until := range g.until {
		if now.After(until) {
			delete(g.until, q)
		}
	}
}
