// Command rmb is the RMB toolbox: keys, the registrar, calls and services
// through a local rmb-peer, dead letters, the load tool and the demo.
//
//	rmb keygen                          new mnemonic and keys
//	rmb register -m WORDS --relay HOST  register a twin at the registrar
//	rmb whois 55                        look a twin up
//	rmb call --dst 55 --cmd calc.add --data '[1,2]' [--ttl 30] [--count 10 --interval 1s | --latency] [--json]
//	rmb serve --cmd echo                a ready echo service (rides out Redis restarts)
//	rmb serve --cmd up --exec 'tr a-z A-Z'  answer with a command's output
//	rmb deadletter list|show|requeue [--ttl 60]|drop
//	rmb bench relay|e2e                 the load tool
//	rmb demo                            registrar, relay, two peers, a service, real calls
//	rmb version                         the version of this build
//
// Every command takes --help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/buildinfo"
	"github.com/rmb-go/rmb/internal/cliconf"
	"github.com/rmb-go/rmb/internal/procs"
)

// command is one subcommand. run returns the process exit code.
type command struct {
	summary string
	run     func(ctx context.Context, env *env, args []string) int
}

// env is what a command writes to; tests give buffers.
type env struct {
	stdout, stderr io.Writer
}

func (e *env) errorf(format string, args ...any) int {
	fmt.Fprintf(e.stderr, "rmb: "+format+"\n", args...)
	return 1
}

var commands = map[string]command{}

// longRunning are the commands that run as long as a daemon, and so run
// with the daemons' runtime setting (procs.QuietSysmon); the bench's
// relay is measured as rmb-relay runs.
var longRunning = map[string]bool{"bench": true, "demo": true, "serve": true}

func register(name, summary string, run func(ctx context.Context, env *env, args []string) int) {
	commands[name] = command{summary: summary, run: run}
}

func main() {
	if len(os.Args) > 1 && longRunning[os.Args[1]] {
		procs.QuietSysmon() // first: it may start the program again
	}
	redis.SetLogger(quietRedis{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, &env{stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(e.stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-version" || args[0] == "version" {
		fmt.Fprintln(e.stdout, buildinfo.Get().Line("rmb"))
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(e.stderr, "rmb: unknown command %q\n\n", args[0])
		usage(e.stderr)
		return 2
	}
	return c.run(ctx, e, args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: rmb <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-11s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "  %-11s %s\n", "version", "print the version (also --version)")
	fmt.Fprintln(w, "\nRun 'rmb <command> --help' for a command's flags.")
}

// newFlags makes a FlagSet whose --help prints usage and the flags.
func newFlags(e *env, name, usageLine string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: rmb %s %s\n\nflags:\n", name, usageLine)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags, which may come before, between or after positional
// arguments (fs.Args() holds those afterwards); it returns (exit code,
// false) when the command should stop: 0 after --help, 2 on a usage error.
func parse(fs *flag.FlagSet, args []string) (int, bool) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0, false
			}
			return 2, false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if rest[0] == "--" {
			positional = append(positional, rest[1:]...)
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	fs.Parse(append([]string{"--"}, positional...))
	// $RMB_REDIS and $RMB_REGISTRAR, as rmb-peer reads them, where no flag
	// was given; not for the demo and the load tool, which start their own.
	if fs.Name() != "demo" && !strings.HasPrefix(fs.Name(), "bench") {
		if err := cliconf.ApplyEnv(fs, "RMB", os.Getenv, "redis", "registrar"); err != nil {
			fmt.Fprintf(fs.Output(), "rmb %s: %v\n", fs.Name(), err)
			return 2, false
		}
	}
	return 0, true
}

// quietRedis keeps go-redis from printing its own connection-pool logs;
// commands report Redis errors themselves.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return fmt.Sprint(*l) }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }
