package buildinfo

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestFromBuildInfo(t *testing.T) {
	bi := func(mainVersion string, settings ...string) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) {
			b := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: mainVersion}}
			for i := 0; i+1 < len(settings); i += 2 {
				b.Settings = append(b.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
			}
			return b, true
		}
	}
	none := func() (*debug.BuildInfo, bool) { return nil, false }
	rev := "1d4d3d8c2f7a0000111122223333444455556666"
	for _, c := range []struct {
		name    string
		stamped string
		commit  string
		read    func() (*debug.BuildInfo, bool)
		want    string
	}{
		{"stamped by the Makefile", "v0.2.0", "1d4d3d8c2f7a", bi("(devel)"), "v0.2.0 (commit 1d4d3d8c2f7a, go1.26.8)"},
		{"stamped version, commit from Go", "v0.2.0", "", bi("(devel)", "vcs.revision", rev, "vcs.modified", "false"), "v0.2.0 (commit 1d4d3d8c2f7a, go1.26.8)"},
		{"go install module@version", "", "", bi("v0.3.1"), "v0.3.1 (go1.26.8)"},
		{"built from a modified checkout", "", "", bi("(devel)", "vcs.revision", rev, "vcs.modified", "true"), "dev (commit 1d4d3d8c2f7a+dirty, go1.26.8)"},
		{"no build information", "", "", none, "dev"},
	} {
		if got := fromBuildInfo(c.stamped, c.commit, c.read).String(); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}

func TestCollector(t *testing.T) {
	i := Info{Version: "v0.2.0", Commit: "abc", GoVersion: "go1.26.8"}
	reg := prometheus.NewRegistry()
	reg.MustRegister(i.Collector())
	want := `
# HELP rmb_build_info Always 1; the labels say which build of rmb-go is running.
# TYPE rmb_build_info gauge
rmb_build_info{commit="abc",goversion="go1.26.8",version="v0.2.0"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "rmb_build_info"); err != nil {
		t.Error(err)
	}
	if got := i.Line("rmb-peer"); got != "rmb-peer v0.2.0 (commit abc, go1.26.8)" {
		t.Errorf("Line: %q", got)
	}
}

// Every binary answers --version with the version and commit the Makefile
// stamps at link time (which also proves the variables' names).
func TestVersionFlags(t *testing.T) {
	dir := t.TempDir()
	pkg := "github.com/rmb-go/rmb/internal/buildinfo"
	build := exec.Command("go", "build", "-o", dir+"/",
		"-ldflags", "-X "+pkg+".version=v9.8.7 -X "+pkg+".commit=0123456789ab",
		"github.com/rmb-go/rmb/cmd/registrar", "github.com/rmb-go/rmb/cmd/relay",
		"github.com/rmb-go/rmb/cmd/peer", "github.com/rmb-go/rmb/cmd/rmb")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for bin, name := range map[string]string{"registrar": "rmb-registrar", "relay": "rmb-relay", "peer": "rmb-peer", "rmb": "rmb"} {
		cmd := exec.Command(filepath.Join(dir, bin), "--version")
		cmd.Env = []string{} // the peer must not need a mnemonic for --version
		out, err := cmd.Output()
		if err != nil {
			t.Errorf("%s --version: %v", name, err)
			continue
		}
		want := name + " v9.8.7 (commit 0123456789ab, " + runtime.Version() + ")\n"
		if string(out) != want {
			t.Errorf("%s --version printed %q, want %q", name, out, want)
		}
	}
}
