package examples_test

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// TestPythonWithoutRedisPy: under a python3 that cannot import redis-py
// (-S leaves out site-packages and dist-packages), bot.py says what is
// missing and how to install it, instead of a traceback.
func TestPythonWithoutRedisPy(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is not installed: apt-get install python3: %v", err)
	}
	out, err := exec.Command(py, "-S", "python/bot.py", "call", "--dst", "1", "calc.add", "1").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("want exit 2, got %v: %s", err, out)
	}
	for _, want := range []string{"redis-py", "apt-get install python3-redis", "pip install redis"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q: %s", want, out)
		}
	}
	if strings.Contains(string(out), "Traceback") {
		t.Errorf("a traceback: %s", out)
	}
}
