package registrar

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A base URL without a scheme is refused by CheckURL with the form wanted;
// a Client made with one fails every request with that error, and Watch
// returns it at once instead of retrying forever.
func TestCheckURL(t *testing.T) {
	for raw, want := range map[string]string{
		"127.0.0.1:8080":      "want a URL like http://127.0.0.1:8080",
		"localhost:8090/api":  "want a URL like http://localhost:8090/api",
		"ws://reg.example":    "scheme ws: want http or https, like http://reg.example",
		"http://":             "want a URL like http://host:port",
		"":                    "want a URL like http://host:port",
		"http://%zz.example/": "want a URL like http://host:port",
	} {
		if err := CheckURL(raw); err == nil || err.Error() != want {
			t.Errorf("CheckURL(%q) = %v, want %q", raw, err, want)
		}
	}
	for _, ok := range []string{"http://127.0.0.1:8080", "https://registrar.example/prefix/", "HTTP://r"} {
		if err := CheckURL(ok); err != nil {
			t.Errorf("CheckURL(%q): %v", ok, err)
		}
	}
	c := NewClient("127.0.0.1:8080", nil)
	const want = `registrar URL "127.0.0.1:8080": want a URL like http://127.0.0.1:8080`
	if _, err := c.Twin(context.Background(), 1); err == nil || !strings.HasSuffix(err.Error(), want) {
		t.Errorf("Twin: %v, want %q", err, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Watch(ctx); err == nil || err.Error() != want {
		t.Errorf("Watch: %v, want %q", err, want)
	}
}
