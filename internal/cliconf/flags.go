package cliconf

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
)

// URL is a string flag whose every value, from the command line, the
// environment or the file, passes Check (registrar.CheckURL, CheckURL):
// a bad URL fails at start with the form wanted, never later in a loop.
type URL struct {
	P     *string
	Check func(string) error
}

func (u URL) String() string {
	if u.P == nil {
		return ""
	}
	return *u.P
}

func (u URL) Set(v string) error {
	if err := u.Check(v); err != nil {
		return err
	}
	*u.P = v
	return nil
}

// CheckURL reports whether raw is an absolute URL with one of schemes and
// a host. The error names the form wanted, built from raw: "127.0.0.1:8080"
// with schemes ws, wss is answered "want a URL like ws://127.0.0.1:8080".
func CheckURL(raw string, schemes ...string) error {
	like := func(rest string) error {
		return fmt.Errorf("want a URL like %s://%s", schemes[0], cmp.Or(rest, "host:port"))
	}
	if !strings.Contains(raw, "://") {
		return like(strings.TrimLeft(raw, "/"))
	}
	u, err := url.Parse(raw)
	if err != nil {
		return like("")
	}
	ok := false
	for _, s := range schemes {
		ok = ok || strings.EqualFold(u.Scheme, s)
	}
	if !ok {
		return fmt.Errorf("scheme %s: want %s, like %s://%s", u.Scheme, strings.Join(schemes, " or "), schemes[0], cmp.Or(u.Host, "host:port"))
	}
	if u.Host == "" {
		return like("")
	}
	return nil
}

// Count is a flag that counts how often it is given, as -d is in the Rust
// binaries: -d is 1, -d -d is 2. It is a boolean flag on the command line;
// the environment and the file may also give a number ("2") or false.
type Count struct{ N *int }

func (c Count) IsBoolFlag() bool { return true }

func (c Count) String() string {
	if c.N == nil {
		return "0"
	}
	return strconv.Itoa(*c.N)
}

func (c Count) Set(v string) error {
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		*c.N = n
		return nil
	}
	b, err := strconv.ParseBool(v)
	switch {
	case err != nil:
		return fmt.Errorf("want true, false or a count, got %q", v)
	case b:
		*c.N++
	default:
		*c.N = 0
	}
	return nil
}

// countBy adds n each time it is given: -dd, which Go's flag package sees
// as one flag named "dd".
type countBy struct {
	Count
	n int
}

func (c countBy) Set(v string) error {
	if b, err := strconv.ParseBool(v); err == nil && b {
		*c.N += c.n
		return nil
	}
	return c.Count.Set(v)
}

// DebugFlags registers the repeatable -d and --debug, with -dd and -ddd
// for the Rust spelling of -d -d. *n counts them.
func DebugFlags(fs *flag.FlagSet, n *int, usage string) {
	fs.Var(Count{n}, "debug", usage+" (repeat for more: -d -d or -dd)")
	fs.Var(Count{n}, "d", "shorthand for --debug")
	fs.Var(countBy{Count{n}, 2}, "dd", "shorthand for --debug --debug")
	fs.Var(countBy{Count{n}, 3}, "ddd", "shorthand for --debug --debug --debug")
}

// LogOptions are the slog handler options for a --debug count: 0 info,
// 1 debug, 2 or more debug with the source file and line of each message.
func LogOptions(debug int) *slog.HandlerOptions {
	o := &slog.HandlerOptions{Level: slog.LevelInfo}
	if debug > 0 {
		o.Level = slog.LevelDebug
	}
	o.AddSource = debug > 1
	return o
}

// refusedPrefix starts the usage of a refused flag.
const refusedPrefix = "not supported: "

// Refuse registers flags that another implementation of the program
// takes (the Rust rmb-relay and rmb-peer) and this one has no counterpart
// for: given one, on the command line or otherwise, parsing fails with
// why, which should name the flag to use instead. --help does not list
// them (PrintDefaults) and they have no variable.
func Refuse(fs *flag.FlagSet, why string, names ...string) {
	for _, n := range names {
		fs.Var(refused(why), n, refusedPrefix+why)
	}
}

type refused string

func (r refused) String() string         { return "" }
func (r refused) Set(string) error       { return errors.New(string(r)) }
func (r refused) IsBoolFlag() bool       { return false }
func isRefused(f *flag.Flag) bool        { return strings.HasPrefix(f.Usage, refusedPrefix) }
func hidden(f *flag.Flag) bool           { return isRefused(f) || isMultiShorthand(f) }
func isMultiShorthand(f *flag.Flag) bool { _, ok := f.Value.(countBy); return ok }

// PrintDefaults prints the flags of fs as fs.PrintDefaults does, less
// the refused ones and -dd/-ddd.
func PrintDefaults(fs *flag.FlagSet) {
	show := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	show.SetOutput(fs.Output())
	fs.VisitAll(func(f *flag.Flag) {
		if hidden(f) {
			return
		}
		show.Var(f.Value, f.Name, f.Usage)
		show.Lookup(f.Name).DefValue = f.DefValue
	})
	show.PrintDefaults()
}

// Spread rewrites the Rust (clap) spellings of flags that take several
// values into one value per flag, for programs that take no positional
// arguments: every name in multi ("relay", "m") is repeated for each
// word that follows it up to the next flag ("--relay a b" is "--relay a
// --relay b"), and a name in pairs takes a second word as the value of
// another flag ("--limit 10 1000" with pairs {"limit": "limit-size"} is
// "--limit 10 --limit-size 1000"). Words after "--" stay as they are.
func Spread(args []string, multi []string, pairs map[string]string) []string {
	isMulti := map[string]bool{}
	for _, n := range multi {
		isMulti[n] = true
	}
	isFlag := func(a string) bool { return len(a) > 1 && a[0] == '-' }
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		out = append(out, a)
		if a == "--" {
			return append(out, args[i+1:]...)
		}
		if !isFlag(a) {
			continue
		}
		name, _, inline := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case isMulti[name]:
			if !inline && i+1 < len(args) {
				i++
				out = append(out, args[i])
			}
			for i+1 < len(args) && !isFlag(args[i+1]) {
				i++
				out = append(out, a[:strings.IndexByte(a+"=", '=')], args[i])
			}
		case pairs[name] != "":
			if !inline && i+1 < len(args) {
				i++
				out = append(out, args[i])
			}
			if i+1 < len(args) && !isFlag(args[i+1]) {
				i++
				out = append(out, "--"+pairs[name], args[i])
			}
		}
	}
	return out
}
