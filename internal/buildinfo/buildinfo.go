// Package buildinfo says which build of rmb-go is running, for --version,
// the relay's status page, the peer's rmb.version answer and the
// rmb_build_info metric:
//
//	fmt.Println(buildinfo.Get().Line("rmb-relay"))
//	// rmb-relay v0.2.0 (commit 1d4d3d8c2f7a, go1.26.8)
//
// The Makefile stamps the version and the commit at link time:
//
//	-ldflags "-X github.com/rmb-go/rmb/internal/buildinfo.version=v0.2.0
//	          -X github.com/rmb-go/rmb/internal/buildinfo.commit=1d4d3d8c2f7a"
//
// Without a stamp, the version is the module version Go recorded (a
// `go install …@v0.2.0`) or "dev", and the commit is the one Go embeds
// when it builds from a git checkout (unless -buildvcs=false).
package buildinfo

import (
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Set at link time by the Makefile.
var version, commit string

// Info identifies a build.
type Info struct {
	Version   string // "v0.2.0", or "dev"
	Commit    string // 12 hex digits of the git commit, "+dirty" if modified; "" if unknown
	GoVersion string // "go1.26.8"
}

var get = sync.OnceValue(func() Info {
	return fromBuildInfo(version, commit, debug.ReadBuildInfo)
})

// Get returns this binary's build information.
func Get() Info { return get() }

func fromBuildInfo(stampedVersion, stampedCommit string, read func() (*debug.BuildInfo, bool)) Info {
	i := Info{Version: stampedVersion}
	bi, ok := read()
	if ok {
		i.GoVersion = bi.GoVersion
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		var modified bool
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				i.Commit = s.Value
				if len(i.Commit) > 12 {
					i.Commit = i.Commit[:12]
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && i.Commit != "" {
			i.Commit += "+dirty"
		}
	}
	if stampedCommit != "" {
		i.Commit = stampedCommit
	}
	if i.Version == "" {
		i.Version = "dev"
	}
	return i
}

// String is the version with its commit: "v0.2.0 (commit 1d4d3d8c2f7a,
// go1.26.8)", or just "dev" when nothing more is known.
func (i Info) String() string {
	s := i.Version
	var extra []string
	if i.Commit != "" {
		extra = append(extra, "commit "+i.Commit)
	}
	if i.GoVersion != "" {
		extra = append(extra, i.GoVersion)
	}
	for n, e := range extra {
		if n == 0 {
			s += " ("
		} else {
			s += ", "
		}
		s += e
	}
	if len(extra) > 0 {
		s += ")"
	}
	return s
}

// Line is what --version prints: the program's name and String.
func (i Info) Line(program string) string { return program + " " + i.String() }

// Collector is the rmb_build_info gauge: always 1, labelled with the
// version, the commit and the Go version, as Prometheus exporters do.
func (i Info) Collector() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "rmb_build_info",
		Help: "Always 1; the labels say which build of rmb-go is running.",
		ConstLabels: prometheus.Labels{
			"version":   i.Version,
			"commit":    i.Commit,
			"goversion": i.GoVersion,
		},
	})
	g.Set(1)
	return g
}

// Flag adds --version to fs. Call the function it returns after fs.Parse:
// when --version was given, it writes Get().Line(program) to w and
// reports true, and the program should exit 0 without doing anything else.
func Flag(fs *flag.FlagSet, program string) func(w io.Writer) bool {
	v := fs.Bool("version", false, "print the version and exit")
	return func(w io.Writer) bool {
		if *v {
			fmt.Fprintln(w, Get().Line(program))
		}
		return *v
	}
}
