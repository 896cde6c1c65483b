package procs

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

// TestMain runs the child of TestQuietSysmon when asked to: it prints its
// pid, calls QuietSysmon (which starts this program again in the same
// process) and prints GODEBUG.
func TestMain(m *testing.M) {
	if os.Getenv("RMB_SYSMON_CHILD") != "" {
		fmt.Printf("pid %d\n", os.Getpid())
		QuietSysmon()
		fmt.Printf("godebug %s\n", os.Getenv("GODEBUG"))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestQuietSysmon(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no exec on windows: QuietSysmon does nothing")
	}
	for _, tc := range []struct {
		godebug string // "" for unset
		want    string
		execs   bool
	}{
		{"", quietSchedtrace, true},
		{"http2client=0", "http2client=0," + quietSchedtrace, true},
		{"schedtrace=0", "schedtrace=0", false}, // the operator decided
	} {
		cmd := exec.Command(os.Args[0])
		cmd.Env = []string{"RMB_SYSMON_CHILD=1"}
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "GODEBUG=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		if tc.godebug != "" {
			cmd.Env = append(cmd.Env, "GODEBUG="+tc.godebug)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("GODEBUG=%q: %v\n%s", tc.godebug, err, out)
		}
		var pids []string
		var godebug string
		for line := range strings.Lines(string(out)) {
			line = strings.TrimSpace(line)
			if p, ok := strings.CutPrefix(line, "pid "); ok {
				pids = append(pids, p)
			}
			if g, ok := strings.CutPrefix(line, "godebug "); ok {
				godebug = g
			}
		}
		if godebug != tc.want {
			t.Errorf("GODEBUG=%q: the program ran with GODEBUG=%q, want %q\n%s", tc.godebug, godebug, tc.want, out)
		}
		switch {
		case tc.execs && (len(pids) != 2 || pids[0] != pids[1]):
			t.Errorf("GODEBUG=%q: want the program run twice in one process, got pids %v", tc.godebug, pids)
		case !tc.execs && len(pids) != 1:
			t.Errorf("GODEBUG=%q: want no second run, got pids %v", tc.godebug, pids)
		}
	}
}

func TestHasSetting(t *testing.T) {
	for in, want := range map[string]bool{
		"":                          false,
		"schedtrace=0":              true,
		"gctrace=1, schedtrace=100": true,
		"schedtraceX=1":             false,
		"schedtrace":                false,
		"gctrace=1":                 false,
		",,=,schedtrace":            false, // garbage: no setting, no panic
		"=1,schedtrace=":            true,
	} {
		if got := hasSetting(in, "schedtrace"); got != want {
			t.Errorf("hasSetting(%q) = %v, want %v", in, got, want)
		}
	}
}
