// Package cliconf lets every flag of a program come from the environment
// and from a configuration file as well as from the command line, with the
// command line first, then the environment, then the file:
//
//	fs := flag.NewFlagSet("rmb-relay", flag.ContinueOnError)
//	fs.StringVar(&redisURL, "redis", "", "...") // and the other flags
//	conf := cliconf.New(fs, "RMB")              // adds --config and --print-config
//	if err := fs.Parse(args); err != nil { ... }
//	if err := conf.Apply(os.Getenv); err != nil { ... }
//	if conf.PrintRequested() {
//		conf.Print(os.Stdout) // the effective settings, secrets masked
//		return
//	}
//
// The variable of flag --redis-url is RMB_REDIS_URL. The file is YAML: a
// mapping from flag names (without dashes) to a value, or to a list of
// values for a flag that may be repeated:
//
//	redis: redis://127.0.0.1:6379
//	domain: [relay.example.com, relay2.example.com]
//
// One-letter flags are shorthands and have no variable. A flag whose usage
// starts with "shorthand for --NAME" is NAME's shorthand: setting either on
// the command line keeps the environment and the file away from NAME.
package cliconf

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Conf reads the environment and the --config file for a FlagSet.
type Conf struct {
	fs       *flag.FlagSet
	prefix   string
	file     string
	print    bool
	skipEnv  map[string]bool
	fromEnv  map[string]string // flag -> variable that set it
	fromFile map[string]bool
	onCmd    map[string]bool
}

// New adds --config FILE and --print-config to fs. Variables are named
// prefix + "_" + the flag's name in upper case with "-" as "_".
func New(fs *flag.FlagSet, prefix string) *Conf {
	c := &Conf{fs: fs, prefix: prefix, skipEnv: map[string]bool{}}
	fs.StringVar(&c.file, "config", "", "YAML file of settings: flag names to values (command-line flags, then $"+prefix+"_* variables, then the file)")
	fs.BoolVar(&c.print, "print-config", false, "print the effective settings, secrets masked, and exit")
	return c
}

// SkipEnv leaves the variables of these flags to the program, which reads
// them itself (with rules of its own).
func (c *Conf) SkipEnv(names ...string) {
	for _, n := range names {
		c.skipEnv[n] = true
	}
}

// EnvName is the variable of flag name.
func (c *Conf) EnvName(name string) string {
	return c.prefix + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// shorthandOf returns the flag f is a shorthand for, or "".
func shorthandOf(f *flag.Flag) string {
	const p = "shorthand for --"
	if rest, ok := strings.CutPrefix(f.Usage, p); ok {
		name, _, _ := strings.Cut(rest, " ")
		return name
	}
	return ""
}

// configurable reports whether f may come from the environment or a file.
func (c *Conf) configurable(f *flag.Flag) bool {
	switch f.Name {
	case "config", "print-config", "version", "help", "h":
		return false
	}
	return len(f.Name) > 1 && shorthandOf(f) == "" && !isRefused(f)
}

// Apply sets, after fs.Parse, every flag the command line did not set from
// its variable (getenv), or else from the --config file. Errors name the
// variable or the file and the flag.
func (c *Conf) Apply(getenv func(string) string) error {
	onCommandLine := map[string]bool{}
	c.onCmd = onCommandLine
	c.fs.Visit(func(f *flag.Flag) {
		onCommandLine[f.Name] = true
		if long := shorthandOf(f); long != "" {
			onCommandLine[long] = true
		}
	})
	var file map[string]any
	if c.file != "" {
		b, err := os.ReadFile(c.file)
		if err != nil {
			return fmt.Errorf("--config: %w", err)
		}
		if err := yaml.Unmarshal(b, &file); err != nil {
			return fmt.Errorf("--config %s: not a YAML mapping of flag names to values: %w", c.file, err)
		}
		for name := range file {
			f := c.fs.Lookup(name)
			if f == nil || !c.configurable(f) {
				return fmt.Errorf("--config %s: unknown setting %q (the settings are the long flag names; see --help)", c.file, name)
			}
		}
	}
	c.fromEnv, c.fromFile = map[string]string{}, map[string]bool{}
	var err error
	c.fs.VisitAll(func(f *flag.Flag) {
		if err != nil || onCommandLine[f.Name] || !c.configurable(f) {
			return
		}
		if !c.skipEnv[f.Name] {
			env := c.EnvName(f.Name)
			if v, ok := lookup(getenv, env); ok {
				if e := f.Value.Set(v); e != nil {
					err = fmt.Errorf("$%s: invalid value %q for --%s: %v", env, masked(f.Name, v), f.Name, e)
				}
				c.fromEnv[f.Name] = env
				return
			}
		}
		v, ok := file[f.Name]
		if !ok {
			return
		}
		values, e := scalars(v)
		if e != nil {
			err = fmt.Errorf("--config %s: %s: %v", c.file, f.Name, e)
			return
		}
		for _, s := range values {
			if e := f.Value.Set(s); e != nil {
				err = fmt.Errorf("--config %s: invalid value %q for %s: %v", c.file, masked(f.Name, s), f.Name, e)
				return
			}
		}
		c.fromFile[f.Name] = true
	})
	return err
}

// lookup reads a variable; an empty one counts as unset.
func lookup(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

// scalars turns a YAML value into the strings to Set.
func scalars(v any) ([]string, error) {
	switch v := v.(type) {
	case nil:
		return nil, errors.New("no value")
	case []any:
		out := make([]string, 0, len(v))
		for _, x := range v {
			s, err := scalars(x)
			if err != nil || len(s) != 1 {
				return nil, errors.New("a list may hold only plain values")
			}
			out = append(out, s[0])
		}
		return out, nil
	case map[string]any:
		return nil, errors.New("want a value or a list of values, not a mapping")
	default:
		return []string{fmt.Sprint(v)}, nil
	}
}

// PrintRequested reports whether --print-config was given.
func (c *Conf) PrintRequested() bool { return c.print }

// Print writes every setting with its effective value and where it came
// from, one "name: value  # source" line each, secrets masked.
func (c *Conf) Print(w io.Writer) {
	var lines []string
	c.fs.VisitAll(func(f *flag.Flag) {
		if !c.configurable(f) {
			return
		}
		src := "default"
		switch {
		case c.fromEnv[f.Name] != "":
			src = "$" + c.fromEnv[f.Name]
		case c.fromFile[f.Name]:
			src = c.file
		case c.onCmd[f.Name]:
			src = "flag"
		}
		lines = append(lines, fmt.Sprintf("%s: %q  # %s", f.Name, masked(f.Name, f.Value.String()), src))
	})
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

// masked hides secrets: the whole value of a flag whose name says it is
// one, and the password of any URL.
func masked(name, v string) string {
	if v == "" {
		return v
	}
	for _, s := range []string{"token", "mnemonic", "password", "secret", "seed"} {
		if strings.Contains(name, s) && !strings.HasSuffix(name, "-file") {
			return "xxxxx"
		}
	}
	parts := strings.Split(v, ",")
	for i, p := range parts {
		if u, err := url.Parse(p); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}

// ApplyEnv sets the named flags of fs (after fs.Parse) from their
// variables where the command line did not set them: the environment
// layer alone, for programs without a config file.
func ApplyEnv(fs *flag.FlagSet, prefix string, getenv func(string) string, names ...string) error {
	c := &Conf{fs: fs, prefix: prefix, skipEnv: map[string]bool{}}
	keep := map[string]bool{}
	for _, n := range names {
		keep[n] = true
	}
	fs.VisitAll(func(f *flag.Flag) {
		if !keep[f.Name] {
			c.skipEnv[f.Name] = true
		}
	})
	return c.Apply(getenv)
}
