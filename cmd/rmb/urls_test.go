package main

import (
	"strings"
	"testing"
)

// Registrar URLs without a scheme, from a flag or $RMB_REGISTRAR, and
// relay URLs where a domain is wanted: refused with the form wanted.
func TestURLErrors(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"whois", "--registrar", "127.0.0.1:8090", "5"}, `invalid value "127.0.0.1:8090" for flag -registrar: want a URL like http://127.0.0.1:8090`},
		{[]string{"RMB_REGISTRAR=localhost:8090"}, []string{"whois", "5"}, `$RMB_REGISTRAR: invalid value "localhost:8090" for --registrar: want a URL like http://localhost:8090`},
		{[]string{"RMB_MNEMONIC=x"}, []string{"register", "--registrar", "registrar.example:443"}, `want a URL like http://registrar.example:443`},
		{[]string{"RMB_MNEMONIC=x"}, []string{"register", "--relay", "wss://relay.example:443"}, `want a relay domain like relay.example:443, not a URL`},
	} {
		r := rmb(t, tc.env, tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr, "first path segment") {
			t.Errorf("%v %q: want exit 2 and %q, got %+v", tc.env, tc.args, tc.want, r)
		}
	}
}
