package flagdoc

import (
	"flag"
	"strings"
	"testing"
)

func TestTable(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var s string
	fs.StringVar(&s, "domain", "", "a domain | or two")
	fs.StringVar(&s, "m", "", "shorthand for --domain")
	fs.Int64Var(new(int64), "queue-bytes", 4<<20, "bytes")
	fs.BoolVar(new(bool), "debug", false, "debug logging")
	fs.String("config", "", "file")
	want := "| flag | variable | default | meaning |\n|---|---|---|---|\n" +
		"| `--config` | — | — | file |\n" +
		"| `--debug` | `$RMB_DEBUG` | off | debug logging |\n" +
		"| `-m`, `--domain` | `$RMB_DOMAIN` | — | a domain \\| or two |\n" +
		"| `--queue-bytes` | `$RMB_QUEUE_BYTES` | `4194304` (4 MiB) | bytes |\n"
	if got := Table(fs, "RMB"); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if strings.Count(want, "\n") != 6 {
		t.Fatal("rows")
	}
}
