package cliconf

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

type settings struct {
	redis, token string
	limit        int
	debug        bool
	domains      list
}

func newSet(s *settings) (*flag.FlagSet, *Conf) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&s.redis, "redis", "redis://localhost:6379", "")
	fs.StringVar(&s.token, "admin-token", "", "")
	fs.IntVar(&s.limit, "limit", 0, "")
	fs.BoolVar(&s.debug, "debug", false, "")
	fs.BoolVar(&s.debug, "d", false, "shorthand for --debug")
	fs.Var(&s.domains, "domain", "")
	fs.Var(&s.domains, "m", "shorthand for --domain")
	return fs, New(fs, "RMB")
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "conf.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// Flags first, then the environment, then the file; lists from the file
// set a repeatable flag once per item; a shorthand on the command line
// counts as its long flag.
func TestPrecedence(t *testing.T) {
	file := writeFile(t, "redis: redis://file:1\nlimit: 7\ndebug: true\ndomain: [a.example, b.example]\nadmin-token: fromfile\n")
	var s settings
	fs, c := newSet(&s)
	if err := fs.Parse([]string{"--config", file, "-m", "cli.example", "--limit", "3"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(env(map[string]string{"RMB_REDIS": "redis://env:2", "RMB_LIMIT": "5", "RMB_DOMAIN": "env.example"})); err != nil {
		t.Fatal(err)
	}
	if s.redis != "redis://env:2" || s.limit != 3 || !s.debug || s.token != "fromfile" || strings.Join(s.domains, " ") != "cli.example" {
		t.Errorf("got %+v", s)
	}
	var out bytes.Buffer
	c.Print(&out)
	for _, want := range []string{
		`redis: "redis://env:2"  # $RMB_REDIS`,
		`limit: "3"  # flag`,
		`debug: "true"  # ` + file,
		`domain: "cli.example"  # flag`,
		`admin-token: "xxxxx"  # ` + file,
	} {
		if !strings.Contains(out.String(), want+"\n") {
			t.Errorf("--print-config lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "fromfile") || strings.Contains(out.String(), "config:") {
		t.Errorf("--print-config shows a secret or itself:\n%s", out.String())
	}
}

func TestPrintMasksURLPasswords(t *testing.T) {
	var s settings
	fs, c := newSet(&s)
	if err := fs.Parse([]string{"--redis", "redis://:hunter2@db:6379/1"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(env(nil)); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	c.Print(&out)
	if strings.Contains(out.String(), "hunter2") || !strings.Contains(out.String(), "redis://:xxxxx@db:6379/1") {
		t.Errorf("password not masked:\n%s", out.String())
	}
}

// Bad input says where it came from, and never quotes a secret.
func TestErrors(t *testing.T) {
	for _, c := range []struct {
		name, file string
		env        map[string]string
		want       string
	}{
		{"unknown setting", "redsi: x\n", nil, `unknown setting "redsi"`},
		{"shorthand in the file", "m: x\n", nil, `unknown setting "m"`},
		{"not a mapping", "- a\n- b\n", nil, "not a YAML mapping"},
		{"mapping value", "redis: {a: 1}\n", nil, "redis: want a value or a list of values"},
		{"bad value in the file", "limit: many\n", nil, `invalid value "many" for limit`},
		{"bad value in the environment", "", map[string]string{"RMB_LIMIT": "lots"}, `$RMB_LIMIT: invalid value "lots" for --limit`},
		{"missing file", "", nil, "--config: open"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var s settings
			fs, conf := newSet(&s)
			args := []string{"--config", filepath.Join(t.TempDir(), "missing.yaml")}
			if c.file != "" {
				args[1] = writeFile(t, c.file)
			} else if c.env != nil {
				args = nil
			}
			if err := fs.Parse(args); err != nil {
				t.Fatal(err)
			}
			err := conf.Apply(env(c.env))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	var s settings
	fs, conf := newSet(&s)
	fs.Parse(nil)
	if err := conf.Apply(env(map[string]string{"RMB_ADMIN_TOKEN": ""})); err != nil || s.token != "" {
		t.Errorf("an empty variable counts as unset: %v %q", err, s.token)
	}
}

func TestSkipEnv(t *testing.T) {
	var s settings
	fs, c := newSet(&s)
	c.SkipEnv("admin-token")
	fs.Parse(nil)
	if err := c.Apply(env(map[string]string{"RMB_ADMIN_TOKEN": "t"})); err != nil || s.token != "" {
		t.Errorf("skipped variable applied: %v %q", err, s.token)
	}
}

func TestApplyEnv(t *testing.T) {
	var s settings
	fs, _ := newSet(&s)
	fs.Parse([]string{"--limit", "2"})
	vars := map[string]string{"RMB_REDIS": "redis://env:1", "RMB_LIMIT": "9", "RMB_ADMIN_TOKEN": "t"}
	if err := ApplyEnv(fs, "RMB", env(vars), "redis", "limit"); err != nil {
		t.Fatal(err)
	}
	if s.redis != "redis://env:1" || s.limit != 2 || s.token != "" {
		t.Errorf("got %+v", s)
	}
}

// The Rust spellings of several values: repeated per word, or a pair
// split over two flags; "--" and other flags stay.
func TestSpread(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"-m a b --limit 10 1000 -d", "-m a -m b --limit 10 --limit-size 1000 -d"},
		{"--relay=ws://a ws://b --debug", "--relay=ws://a --relay ws://b --debug"},
		{"--limit 10 -d", "--limit 10 -d"},
		{"--limit=10 20", "--limit=10 --limit-size 20"},
		{"-m a -- b c", "-m a -- b c"},
		{"-x a b", "-x a b"},
	} {
		got := strings.Join(Spread(strings.Fields(tc.in), []string{"m", "relay"}, map[string]string{"limit": "limit-size"}), " ")
		if got != tc.want {
			t.Errorf("Spread(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// -d counts, -dd adds two, the environment may give a count; refused
// flags fail with their reason and are neither settings nor in --help.
func TestCountAndRefuse(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var n int
	DebugFlags(fs, &n, "debug")
	Refuse(fs, "give --registrar URL", "substrate")
	c := New(fs, "RMB")
	if err := fs.Parse([]string{"-d", "-dd"}); err != nil || n != 3 {
		t.Fatalf("-d -dd: %d %v", n, err)
	}
	n = 0
	fs2 := flag.NewFlagSet("t", flag.ContinueOnError)
	fs2.SetOutput(io.Discard)
	DebugFlags(fs2, &n, "debug")
	Refuse(fs2, "give --registrar URL", "substrate")
	c = New(fs2, "RMB")
	fs2.Parse(nil)
	if err := c.Apply(env(map[string]string{"RMB_DEBUG": "2", "RMB_SUBSTRATE": "x"})); err != nil || n != 2 {
		t.Errorf("RMB_DEBUG=2: %d %v", n, err)
	}
	if err := fs2.Parse([]string{"--substrate", "wss://x"}); err == nil || !strings.Contains(err.Error(), "give --registrar URL") {
		t.Errorf("--substrate: %v", err)
	}
	var help, conf bytes.Buffer
	fs2.SetOutput(&help)
	PrintDefaults(fs2)
	c.Print(&conf)
	if strings.Contains(help.String(), "substrate") || strings.Contains(help.String(), "\n  -dd") || !strings.Contains(help.String(), "-debug") ||
		strings.Contains(conf.String(), "substrate") {
		t.Errorf("help:\n%s\nconfig:\n%s", help.String(), conf.String())
	}
	for raw, want := range map[string]string{"127.0.0.1:8080": "want a URL like ws://127.0.0.1:8080", "http://r": "scheme http: want ws or wss, like ws://r",
		"ws://": "want a URL like ws://host:port", "": "want a URL like ws://host:port"} {
		if err := CheckURL(raw, "ws", "wss"); err == nil || err.Error() != want {
			t.Errorf("CheckURL(%q) = %v, want %q", raw, err, want)
		}
	}
	if err := CheckURL("wss://relay.example:443/x", "ws", "wss"); err != nil {
		t.Errorf("good URL: %v", err)
	}
}
