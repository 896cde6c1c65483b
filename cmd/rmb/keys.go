package main

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/rmb-go/rmb/internal/cliconf"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

func init() {
	register("keygen", "make a new mnemonic and show its keys", keygen)
	register("register", "register a twin at the registrar (or show the existing one)", registerTwin)
	register("whois", "look a twin up at the registrar", whois)
}

const defaultRegistrar = "http://127.0.0.1:8090"

type keysOut struct {
	Mnemonic  string `json:"mnemonic,omitempty"`
	KeyType   string `json:"key_type"`
	PublicKey string `json:"public_key"`
	E2EKey    string `json:"e2e_key"`
}

func keygen(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "keygen", "[--key-type sr25519|ed25519] [--json]")
	keyType := fs.String("key-type", "sr25519", "signing key type: sr25519 or ed25519")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	kt, err := identity.ParseKeyType(*keyType)
	if err != nil {
		return e.errorf("%v", err)
	}
	m, err := identity.NewMnemonic()
	if err != nil {
		return e.errorf("making a mnemonic: %v", err)
	}
	id, err := identity.FromSecret(m, kt)
	if err != nil {
		return e.errorf("%v", err)
	}
	out := keysOut{Mnemonic: m, KeyType: string(kt), PublicKey: hex.EncodeToString(id.PublicKey()), E2EKey: hex.EncodeToString(id.E2EPublicKey())}
	if *asJSON {
		return printJSON(e, out)
	}
	fmt.Fprintf(e.stdout, "mnemonic:   %s\nkey type:   %s\npublic key: %s\ne2e key:    %s\n\nKeep the mnemonic secret: it is the twin.\n",
		out.Mnemonic, out.KeyType, out.PublicKey, out.E2EKey)
	return 0
}

// secretFrom picks the secret from the flag, then RMB_MNEMONIC.
func secretFrom(flagValue, file string) (string, error) {
	switch {
	case flagValue != "":
		return flagValue, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	case os.Getenv("RMB_MNEMONIC") != "":
		return os.Getenv("RMB_MNEMONIC"), nil
	}
	return "", errors.New("no secret: give -m/--mnemonic, --mnemonic-file or RMB_MNEMONIC")
}

func registerTwin(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "register", "-m WORDS|0xSEED [--key-type sr25519] --relay HOST[:PORT]... [--registrar URL]")
	var mnemonic, file string
	fs.StringVar(&mnemonic, "mnemonic", "", "secret: mnemonic words or 0x hex seed (or RMB_MNEMONIC)")
	fs.StringVar(&mnemonic, "m", "", "short for --mnemonic")
	fs.StringVar(&file, "mnemonic-file", "", "read the secret from this file")
	keyType := fs.String("key-type", "sr25519", "signing key type: sr25519 or ed25519")
	reg := registrarFlag(fs)
	var relays domainList
	fs.Var(&relays, "relay", "relay domain (host[:port]) the twin is reachable on; repeatable")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	secret, err := secretFrom(mnemonic, file)
	if err != nil {
		return e.errorf("%v", err)
	}
	kt, err := identity.ParseKeyType(*keyType)
	if err != nil {
		return e.errorf("%v", err)
	}
	id, err := identity.FromSecret(secret, kt)
	if err != nil {
		return e.errorf("%v", err)
	}
	c := registrar.NewClient(*reg, nil)
	twin, err := c.TwinByPublicKey(ctx, id.PublicKey())
	switch {
	case err == nil:
		fmt.Fprintf(e.stderr, "already registered\n")
	case errors.Is(err, registrar.ErrNotFound):
		if twin, err = c.Register(ctx, id, []string(relays)); err != nil {
			return e.errorf("register: %v", err)
		}
	default:
		return e.errorf("registrar %s: %v", *reg, err)
	}
	return printTwin(e, twin, *asJSON)
}

func whois(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "whois", "[--registrar URL] [--json] TWIN")
	reg := registrarFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	n, err := strconv.ParseUint(fs.Arg(0), 10, 32)
	if err != nil {
		return e.errorf("%q is not a twin id", fs.Arg(0))
	}
	c := registrar.NewClient(*reg, nil)
	twin, err := c.Twin(ctx, uint32(n))
	if err != nil {
		if errors.Is(err, registrar.ErrNotFound) {
			return e.errorf("twin %d is not registered", n)
		}
		return e.errorf("registrar %s: %v", *reg, err)
	}
	return printTwin(e, twin, *asJSON)
}

type twinOut struct {
	TwinID    uint32   `json:"twin_id"`
	PublicKey string   `json:"public_key"`
	Relays    []string `json:"relays"`
	E2EKey    string   `json:"rmb_enc_key"`
}

func printTwin(e *env, t *registrar.Twin, asJSON bool) int {
	out := twinOut{TwinID: t.ID, PublicKey: base64.StdEncoding.EncodeToString(t.PublicKey), Relays: t.Relays, E2EKey: base64.StdEncoding.EncodeToString(t.E2EKey)}
	if asJSON {
		return printJSON(e, out)
	}
	e2e := "none (plain payloads)"
	if len(t.E2EKey) > 0 {
		e2e = hex.EncodeToString(t.E2EKey)
	}
	fmt.Fprintf(e.stdout, "twin:       %d\npublic key: %s\nrelays:     %s\ne2e key:    %s\n",
		t.ID, hex.EncodeToString(t.PublicKey), strings.Join(t.Relays, ", "), e2e)
	return 0
}

func printJSON(e *env, v any) int {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return e.errorf("%v", err)
	}
	return 0
}

// registrarFlag adds --registrar, checked as rmb-peer checks it.
func registrarFlag(fs *flag.FlagSet) *string {
	reg := defaultRegistrar
	fs.Var(cliconf.URL{P: &reg, Check: registrar.CheckURL}, "registrar", "registrar URL, http:// or https://")
	return &reg
}

// domainList is a repeatable flag of relay domains: host or host:port,
// as twins list them at the registrar, not URLs.
type domainList []string

func (l *domainList) String() string { return strings.Join(*l, ",") }
func (l *domainList) Set(v string) error {
	if u, err := url.Parse(v); strings.Contains(v, "://") && err == nil {
		return fmt.Errorf("want a relay domain like %s, not a URL", cmp.Or(u.Host, "relay.example:443"))
	}
	if v == "" || strings.ContainsAny(v, "/ ") {
		return fmt.Errorf("want a relay domain like relay.example:443, got %q", v)
	}
	*l = append(*l, v)
	return nil
}
