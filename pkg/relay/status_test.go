package relay

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// getStatus fetches /status.json with the bearer token tok ("" for none).
func getStatus(t *testing.T, tr *testRelay, tok string) (int, statusSnapshot, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", tr.srv.URL+"/status.json", nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var s statusSnapshot
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &s); err != nil {
			t.Fatalf("status.json: %v: %s", err, body)
		}
	}
	return resp.StatusCode, s, string(body)
}

// mustStatus is getStatus that expects 200.
func mustStatus(t *testing.T, tr *testRelay, tok string) (statusSnapshot, string) {
	t.Helper()
	code, s, body := getStatus(t, tr, tok)
	if code != http.StatusOK {
		t.Fatalf("status.json: %d %s", code, body)
	}
	return s, body
}

// checkPublic fails when a public snapshot names a session: no session
// keys anywhere in the document, and none of the secrets (sids, remote
// addresses) in its text.
func checkPublic(t *testing.T, raw string, secrets ...string) {
	t.Helper()
	var doc any
	if err := json.Unmarshal([]byte(raw), &doc); err != nil {
		t.Fatalf("not JSON: %v: %s", err, raw)
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				switch k {
				case "twin", "sid", "remote", "connected_at", "send_queue":
					t.Errorf("public snapshot has %s.%s: %s", path, k, raw)
				case "sessions":
					if _, isList := x.([]any); isList {
						t.Errorf("public snapshot lists %s.sessions: %s", path, raw)
					}
				}
				walk(path+"."+k, x)
			}
		case []any:
			for i, x := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), x)
			}
		}
	}
	walk("", doc)
	for _, s := range secrets {
		if strings.Contains(raw, s) {
			t.Errorf("public snapshot contains %q: %s", s, raw)
		}
	}
}

// remotes are the remote addresses of the relay's sessions.
func remotes(r *Relay) []string {
	var out []string
	for _, s := range r.Sessions() {
		out = append(out, s.Remote)
	}
	return out
}

func TestStatusPageRoutes(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, nil, ln, nil)

	resp, err := http.Get(tr.srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	page := string(body)
	if !strings.Contains(page, "<script>") || !strings.Contains(page, "status/events") {
		t.Fatalf("GET / is not the status page: %.200s", page)
	}
	for _, bad := range []string{"http://", "https://", "//cdn", "@import"} {
		if strings.Contains(page, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
	attrs := regexp.MustCompile(`(?i)\b(src|href|action)\s*=\s*["']?([^"'\s>]*)`).FindAllStringSubmatch(page, -1)
	for _, m := range attrs {
		if v := strings.ToLower(m[2]); v != "data:," && (strings.Contains(v, ":") || strings.HasPrefix(v, "//")) {
			t.Errorf("page loads %s=%q", m[1], m[2])
		}
	}
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'sha256-") {
		t.Errorf("CSP: %q", csp)
	}

	// A WebSocket upgrade on / is still a session.
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "")
	ca.send(b.num, "", "still a relay")
	cb.expectPayload("still a relay")

	// POST / is still federation, not the page.
	resp, err = http.Post(tr.srv.URL+"/", "application/x-protobuf", strings.NewReader("not an envelope"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "malformed envelope") {
		t.Fatalf("POST /: %d %q", resp.StatusCode, body)
	}
	// Other paths are unchanged.
	resp, err = http.Get(tr.srv.URL + "/nope")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /nope: %d", resp.StatusCode)
	}
}

func TestStatusJSON(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	deadLn, dead := listen(t)
	deadLn.Close() // connection refused
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	far := reg.newTwin(t, dead)
	tr := startRelay(t, reg, &Options{AdminToken: "sekret", Version: "v1.2.3"}, ln, nil)
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "secret-sid")
	waitSession(t, tr.Relay, SessionKey{a.num, ""}, true)
	waitSession(t, tr.Relay, SessionKey{b.num, "secret-sid"}, true)

	before, raw := mustStatus(t, tr, "")
	checkPublic(t, raw, append(remotes(tr.Relay), "secret-sid")...)
	if before.Version != "v1.2.3" || before.Stats.Sessions != 2 || before.Admin ||
		!slices.Equal(before.Domains, []string{domain}) || before.Uptime < 0 {
		t.Fatalf("status: %s", raw)
	}

	const n = 5
	for i := range n {
		ca.send(b.num, "secret-sid", fmt.Sprint("m", i))
		cb.expectPayload(fmt.Sprint("m", i))
	}
	waitFor(t, 20*time.Second, func() error {
		s, _ := mustStatus(t, tr, "")
		st, was := s.Stats, before.Stats
		if st.MessagesIn != was.MessagesIn+n || st.MessagesOut != was.MessagesOut+n ||
			// A session that just connected drains the store first: on a
			// slow machine its first envelope may be routed through it.
			st.Routed["local"]+st.Routed["stored"] != was.Routed["local"]+was.Routed["stored"]+n ||
			st.BytesIn <= was.BytesIn || st.BytesOut <= was.BytesOut {
			return fmt.Errorf("stats did not follow %d messages: before %+v, now %+v", n, was, st)
		}
		return nil
	})

	// Federation to a relay that is down shows as a failing peer; an
	// unknown twin as a drop.
	e := request(t, a, "", far.num, "", "far away", 2)
	ca.sendRaw(marshal(t, e))
	ca.send(999999, "", "nobody")
	waitFor(t, 20*time.Second, func() error {
		s, raw := mustStatus(t, tr, "")
		checkPublic(t, raw, append(remotes(tr.Relay), "secret-sid")...)
		if s.Stats.Dropped["unknown_twin"] != 1 || s.Stats.Routed["federated"] != 1 {
			return fmt.Errorf("stats: %+v", s.Stats)
		}
		i := slices.IndexFunc(s.Peers, func(p peerStatus) bool { return p.Domain == dead })
		if i < 0 || s.PeersTotal != len(s.Peers) {
			return fmt.Errorf("no peer %s: %s", dead, raw)
		}
		if p := s.Peers[i]; p.Failure == 0 || p.RecentFailures == 0 || p.LastFailure == nil || p.Success != 0 {
			return fmt.Errorf("peer %s: %+v", dead, p)
		}
		return nil
	})

	// The admin token lists the sessions; any other Authorization is 401
	// and says nothing.
	adm, raw := mustStatus(t, tr, "sekret")
	if !adm.Admin || len(adm.Sessions) != 2 {
		t.Fatalf("admin status: %s", raw)
	}
	got := []SessionKey{{adm.Sessions[0].Twin, adm.Sessions[0].SID}, {adm.Sessions[1].Twin, adm.Sessions[1].SID}}
	want := []SessionKey{{a.num, ""}, {b.num, "secret-sid"}}
	slices.SortFunc(want, func(x, y SessionKey) int { return int(x.Twin) - int(y.Twin) })
	if !slices.Equal(got, want) || adm.Sessions[0].ConnectedAt.IsZero() || adm.Sessions[0].Remote == "" {
		t.Fatalf("admin sessions %+v, want %v", adm.Sessions, want)
	}
	for _, tok := range []string{"wrong", "sekret2", "Sekret"} {
		code, _, body := getStatus(t, tr, tok)
		if code != http.StatusUnauthorized || strings.Contains(body, "secret-sid") || strings.Contains(body, `"twin"`) {
			t.Fatalf("token %q: %d %s", tok, code, body)
		}
	}
	// Without an AdminToken no header opens the sessions list.
	tr2 := startRelay(t, reg, nil, nil, nil)
	if code, _, body := getStatus(t, tr2, ""); code != 200 {
		t.Fatalf("no admin token, public: %d %s", code, body)
	}
	if code, _, body := getStatus(t, tr2, ""); code != 200 || !strings.Contains(body, `"version":"dev"`) {
		t.Fatalf("default version: %d %s", code, body)
	}
	for _, tok := range []string{"", " ", "sekret"} {
		req, _ := http.NewRequest("GET", tr2.srv.URL+"/status.json", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("no admin token, bearer %q: %d", tok, resp.StatusCode)
		}
	}
}

// eventStream is a client of /status/events.
type eventStream struct {
	resp   *http.Response
	cancel context.CancelFunc
	events chan string // data of each event; closed at the end of the stream
}

func openEvents(t *testing.T, client *http.Client, url, tok string) (*eventStream, int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/status/events", nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return nil, resp.StatusCode
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events Content-Type %q", ct)
	}
	s := &eventStream{resp: resp, cancel: cancel, events: make(chan string, 64)}
	go func() {
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				select {
				case s.events <- data:
				default: // the test is not reading: drop
				}
			}
		}
	}()
	t.Cleanup(s.close)
	return s, resp.StatusCode
}

func (s *eventStream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// next returns the next event within d.
func (s *eventStream) next(t *testing.T, d time.Duration) (statusSnapshot, string) {
	t.Helper()
	select {
	case data, ok := <-s.events:
		if !ok {
			t.Fatal("event stream ended")
		}
		var snap statusSnapshot
		if err := json.Unmarshal([]byte(data), &snap); err != nil {
			t.Fatalf("event: %v: %s", err, data)
		}
		return snap, data
	case <-time.After(d):
		t.Fatalf("no event within %s", d)
	}
	panic("unreachable")
}

func waitStreams(t *testing.T, tr *testRelay, n int) {
	t.Helper()
	waitFor(t, 20*time.Second, func() error {
		if s, _ := mustStatus(t, tr, ""); s.Streams != n {
			return fmt.Errorf("%d streams, want %d", s.Streams, n)
		}
		return nil
	})
}

func TestStatusEvents(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{AdminToken: "sekret"}, ln, nil)
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "secret-sid")
	waitSession(t, tr.Relay, SessionKey{a.num, ""}, true)
	waitSession(t, tr.Relay, SessionKey{b.num, "secret-sid"}, true)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()

	// Even with the admin token, the stream is the public view.
	es, _ := openEvents(t, client, tr.srv.URL, "sekret")
	first, raw := es.next(t, 3*time.Second)
	checkPublic(t, raw, append(remotes(tr.Relay), "secret-sid")...)
	if first.Stats.Sessions != 2 || first.Streams != 1 || first.Admin {
		t.Fatalf("first event: %s", raw)
	}
	for range 3 {
		ca.send(b.num, "secret-sid", "x")
		cb.expectPayload("x")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, raw := es.next(t, 3*time.Second)
		checkPublic(t, raw, append(remotes(tr.Relay), "secret-sid")...)
		if s.Stats.MessagesIn == first.Stats.MessagesIn+3 && s.Time.After(first.Time) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events did not follow the traffic: first %s, last %s", first.Time, raw)
		}
	}

	// The stream ends when the client goes away.
	es.close()
	waitStreams(t, tr, 0)

	// At most maxStatusStreams at once; a freed slot can be taken again.
	var open []*eventStream
	for range maxStatusStreams {
		s, code := openEvents(t, client, tr.srv.URL, "")
		if code != 200 {
			t.Fatalf("stream %d: %d", len(open), code)
		}
		open = append(open, s)
	}
	if _, code := openEvents(t, client, tr.srv.URL, ""); code != http.StatusServiceUnavailable {
		t.Fatalf("stream over the limit: %d", code)
	}
	open[0].close()
	waitStreams(t, tr, maxStatusStreams-1)
	s, code := openEvents(t, client, tr.srv.URL, "")
	if code != 200 {
		t.Fatalf("stream after one left: %d", code)
	}
	open[0] = s
	for _, s := range open {
		s.close()
	}
	waitStreams(t, tr, 0)

	// Relay shutdown ends the streams.
	es, _ = openEvents(t, client, tr.srv.URL, "")
	es.next(t, 3*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	expectEnd(t, es, 5*time.Second)
}

// expectEnd waits for the server to end the stream.
func expectEnd(t *testing.T, es *eventStream, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case _, ok := <-es.events:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("stream still open after %s", d)
		}
	}
}

// TestStatusEventsServerShutdown: http.Server.Shutdown waits for active
// requests; an event stream must end instead of holding it up.
func TestStatusEventsServerShutdown(t *testing.T) {
	reg := startRegistrar(t)
	tr := startRelay(t, reg, nil, nil, nil)
	ln, _ := listen(t)
	srv := &http.Server{Handler: tr.Handler()}
	go srv.Serve(ln)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	es, _ := openEvents(t, client, "http://"+ln.Addr().String(), "")
	es.next(t, 3*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("server shutdown took %s", d)
	}
	expectEnd(t, es, 5*time.Second)
}

// TestStatusPageInBrowser drives the page in headless Chromium over the
// DevTools protocol: the figures must follow the traffic, and the admin
// token must open the sessions list. Screenshots go to a temporary
// directory and, when RMB_SCREENSHOT is set, to that path (public view) and
// to the same path with "-admin" before the extension (admin view).
func TestStatusPageInBrowser(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	deadLn, dead := listen(t)
	deadLn.Close()
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	far := reg.newTwin(t, dead)
	tr := startRelay(t, reg, &Options{AdminToken: "sekret", Version: "v0.9.0-test"}, ln, nil)
	ca := dial(t, tr, a, "")
	dial(t, tr, b, "web-1") // reads in the background
	waitSession(t, tr.Relay, SessionKey{b.num, "web-1"}, true)

	// History from before the page opened: it draws it at once.
	for range 4 {
		start := time.Now()
		tr.status.hist.sample()
		for time.Since(start) < 3*time.Millisecond { // distinct timestamps for the page (ms)
			runtime.Gosched()
		}
	}
	samples := len(tr.status.hist.history())

	page := startBrowser(t)
	page.call("Emulation.setDeviceMetricsOverride", map[string]any{
		"width": 1280, "height": 1100, "deviceScaleFactor": 1, "mobile": false}, nil)
	page.call("Page.navigate", map[string]any{"url": tr.srv.URL + "/"}, nil)

	page.waitText("#sessions", 10*time.Second, func(s string) bool { return s == "2" })
	page.waitText("#conn", 5*time.Second, func(s string) bool { return s == "live" })
	page.waitEval(`document.getElementById('line-in').getAttribute('points').split(' ').length`, 10*time.Second,
		func(s string) bool { n, _ := strconv.Atoi(s); return n >= samples })
	page.waitText("#tp-max", 5*time.Second, func(s string) bool { return s != "" })
	if y := page.text(".ylabel"); y != "messages / s" {
		t.Fatalf("throughput chart's y-axis label: %q", y)
	}
	page.waitText("#health", 10*time.Second, func(s string) bool { return strings.Contains(s, "registrar ok") })
	page.waitText("#goroutines", 5*time.Second, func(s string) bool { n, _ := strconv.Atoi(strings.ReplaceAll(s, ",", "")); return n > 0 })
	before := page.text("#msgs-in")
	if before != "0" {
		t.Fatalf("messages in before any traffic: %q", before)
	}

	// Traffic: a stream of envelopes from a to b for three seconds, one to
	// a relay that is down and one to a twin that does not exist.
	const n = 150
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = marshal(t, request(t, a, "", b.num, "web-1", "hello", 60))
	}
	ca.sendRaw(marshal(t, request(t, a, "", far.num, "", "far", 3)))
	ca.sendRaw(marshal(t, request(t, a, "", 424242, "", "nobody", 60)))
	sent := make(chan error, 1)
	go func() {
		for _, f := range frames {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := ca.c.Write(ctx, websocket.MessageBinary, f)
			cancel()
			if err != nil {
				sent <- err
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		sent <- nil
	}()
	page.waitText("#msgs-in", 10*time.Second, func(s string) bool { return s != before })
	page.waitText("#rate-in", 10*time.Second, func(s string) bool { f, err := strconv.ParseFloat(s, 64); return err == nil && f > 0 })
	page.waitText("#peers", 10*time.Second, func(s string) bool { return strings.Contains(s, dead) })
	page.waitText("#dropped", 5*time.Second, func(s string) bool { return strings.Contains(s, "unknown twin") })
	tr.status.hist.sample() // a sample with traffic: the charts and the latency card follow
	page.waitEval(`document.getElementById('line-in').getAttribute('points').split(' ').length`, 10*time.Second,
		func(s string) bool { n, _ := strconv.Atoi(s); return n > samples })
	page.waitText("#p50", 10*time.Second, func(s string) bool { return strings.HasSuffix(s, " ms") })
	if body := page.text("body"); strings.Contains(body, "web-1") {
		t.Fatalf("the public page shows a sid: %s", body)
	}
	public := page.screenshot("status.png")

	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	// All sent (under 1,000: no thousands separator); out are b's and a's errors.
	page.waitText("#msgs-in", 10*time.Second, func(s string) bool { return s == strconv.Itoa(n+2) })
	page.waitText("#msgs-out", 10*time.Second, func(s string) bool {
		m, err := strconv.Atoi(strings.ReplaceAll(s, ",", ""))
		return err == nil && m >= n+1
	})

	// A wrong token is refused; the right one lists the sessions.
	login := func(tok string) {
		page.eval(fmt.Sprintf(`document.getElementById('token').value = %q; document.getElementById('login').requestSubmit(); true`, tok))
	}
	login("wrong")
	page.waitText("#auth-error", 5*time.Second, func(s string) bool { return s == "token refused" })
	login("sekret")
	page.waitText("#session-list", 5*time.Second, func(s string) bool {
		return strings.Contains(s, "web-1") && strings.Contains(s, strconv.Itoa(int(a.num)))
	})
	page.waitText("#conn", 5*time.Second, func(s string) bool { return s == "admin view, polling" })
	page.waitText("#streams", 5*time.Second, func(s string) bool { return s == "0" }) // the page closed its stream
	page.waitText("#session-list", 5*time.Second, func(s string) bool { return strings.Contains(s, "disconnect") })
	admin := page.screenshot("status-admin.png")

	// Sorting by a column asks the relay for that order.
	page.eval(`document.querySelector('th[data-sort="out"]').click(); true`)
	page.waitText(`th[data-sort="out"]`, 5*time.Second, func(s string) bool { return s == "out ▼" })
	// The disconnect button (asked twice) closes b's sessions through the
	// admin API.
	click := fmt.Sprintf(`document.querySelector('button[data-twin="%d"]').click(); true`, b.num)
	page.eval(click)
	page.waitEval(fmt.Sprintf(`document.querySelector('button[data-twin="%d"]').textContent`, b.num), 5*time.Second,
		func(s string) bool { return s == "confirm" })
	page.eval(click)
	page.waitText("#admin-msg", 10*time.Second, func(s string) bool { return strings.Contains(s, "1 session(s) closed") })
	waitSession(t, tr.Relay, SessionKey{b.num, "web-1"}, false)
	page.waitText("#session-list", 10*time.Second, func(s string) bool { return !strings.Contains(s, "web-1") })

	if p := os.Getenv("RMB_SCREENSHOT"); p != "" {
		adminPath := strings.TrimSuffix(p, filepath.Ext(p)) + "-admin" + filepath.Ext(p)
		for dst, src := range map[string]string{p: public, adminPath: admin} {
			b, err := os.ReadFile(src)
			if err == nil {
				err = os.WriteFile(dst, b, 0o644)
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("screenshot: %s", dst)
		}
	}
}

// cdp is a Chrome DevTools protocol connection to one page.
type cdp struct {
	t   *testing.T
	c   *websocket.Conn
	id  int
	dir string // for screenshots
}

// startBrowser starts headless Chromium and returns a connection to a new
// blank page. The browser is killed when the test ends.
func startBrowser(t *testing.T) *cdp {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed: run `make test` (scripts/deps.sh installs it) or `apt-get install chromium`: %v", err)
	}
	profile, err := os.MkdirTemp("", "rmb-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--no-default-browser-check", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--disable-extensions",
		"--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
		"--user-data-dir="+profile, "--remote-debugging-port=0", "about:blank")
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	pw.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		pr.Close()
		os.RemoveAll(profile)
	})

	// "DevTools listening on ws://127.0.0.1:<port>/devtools/browser/<id>"
	found := make(chan string, 1)
	var mu sync.Mutex
	var out []string
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			if u, ok := strings.CutPrefix(line, "DevTools listening on "); ok {
				found <- u
				continue
			}
			mu.Lock()
			if len(out) < 50 {
				out = append(out, line)
			}
			mu.Unlock()
		}
	}()
	var browserURL string
	select {
	case browserURL = <-found:
	case <-time.After(15 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("chromium did not print its DevTools address within 15s:\n%s", strings.Join(out, "\n"))
	}
	browser := dialCDP(t, browserURL)
	var target struct{ TargetID string }
	browser.call("Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	host := strings.TrimPrefix(browserURL, "ws://")
	host = host[:strings.IndexByte(host, '/')]
	return dialCDP(t, "ws://"+host+"/devtools/page/"+target.TargetID)
}

func dialCDP(t *testing.T, url string) *cdp {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial DevTools %s: %v", url, err)
	}
	c.SetReadLimit(64 << 20) // screenshots
	t.Cleanup(func() { c.CloseNow() })
	return &cdp{t: t, c: c, dir: t.TempDir()}
}

// call sends one command and waits for its answer, skipping events.
func (p *cdp) call(method string, params, result any) {
	p.t.Helper()
	if err := p.try(method, params, result); err != nil {
		p.t.Fatalf("%s: %v", method, err)
	}
}

func (p *cdp) try(method string, params, result any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p.id++
	req, _ := json.Marshal(map[string]any{"id": p.id, "method": method, "params": params})
	if err := p.c.Write(ctx, websocket.MessageText, req); err != nil {
		return err
	}
	for {
		_, b, err := p.c.Read(ctx)
		if err != nil {
			return err
		}
		var resp struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &resp); err != nil {
			return err
		}
		if resp.ID != p.id {
			continue // an event
		}
		if resp.Error != nil {
			return errors.New(resp.Error.Message)
		}
		if result != nil {
			return json.Unmarshal(resp.Result, result)
		}
		return nil
	}
}

// eval evaluates a JavaScript expression and returns its value as a string.
func (p *cdp) eval(expr string) string {
	p.t.Helper()
	var res struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	p.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &res)
	if res.ExceptionDetails != nil {
		p.t.Fatalf("evaluate %s: %s", expr, res.ExceptionDetails.Text)
	}
	if res.Result.Value == nil {
		return ""
	}
	return fmt.Sprint(res.Result.Value)
}

// text is the text content of the element selected by sel ("" if none).
func (p *cdp) text(sel string) string {
	p.t.Helper()
	return p.eval(fmt.Sprintf(`(document.querySelector(%q) || {}).textContent || ""`, sel))
}

// waitText polls the text of sel until ok accepts it, or fails after d.
func (p *cdp) waitText(sel string, d time.Duration, ok func(string) bool) string {
	p.t.Helper()
	return p.waitEval(fmt.Sprintf(`(document.querySelector(%q) || {}).textContent || ""`, sel), d, ok)
}

// waitEval polls the value of expr until ok accepts it, or fails after d.
func (p *cdp) waitEval(expr string, d time.Duration, ok func(string) bool) string {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := strings.TrimSpace(p.eval(expr))
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("page: %s is %q after %s", expr, s, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// screenshot captures the whole page into name in the test's directory
// and returns the path.
func (p *cdp) screenshot(name string) string {
	p.t.Helper()
	var shot struct {
		Data string `json:"data"`
	}
	p.call("Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &shot)
	b, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		p.t.Fatal(err)
	}
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot: %s", path)
	return path
}

func TestBucketQuantile(t *testing.T) {
	bounds := []float64{1, 2, 4}
	for _, tc := range []struct {
		q    float64
		cum  []uint64
		n    uint64
		want float64 // -1: nil
	}{
		{0.5, []uint64{0, 0, 0}, 0, -1},
		{0.5, []uint64{10, 10, 10}, 10, 0.5}, // all in the first bucket: interpolated from 0
		{0.5, []uint64{0, 10, 10}, 10, 1.5},  // second bucket, from 1 to 2
		{0.99, []uint64{50, 100, 100}, 100, 1.98},
		{0.99, []uint64{0, 0, 0}, 5, 4},          // all above the last bound
		{0.5, []uint64{4, 4, 10}, 10, 2 + 2.0/6}, // rank 5 in the third bucket
	} {
		got := bucketQuantile(tc.q, bounds, tc.cum, tc.n)
		switch {
		case tc.want < 0 && got != nil:
			t.Errorf("q%v %v: %v, want nil", tc.q, tc.cum, *got)
		case tc.want >= 0 && (got == nil || math.Abs(*got-tc.want) > 1e-9):
			t.Errorf("q%v %v: %v, want %v", tc.q, tc.cum, got, tc.want)
		}
	}
}

// TestStatusHistory: a relay has a sample as soon as it starts, so a page
// opened at once draws something; samples carry the throughput and the
// routing latency of their interval; the ring keeps the last hour.
func TestStatusHistory(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{AdminToken: "sekret"}, ln, nil)
	var hist []statusSample
	waitFor(t, 20*time.Second, func() error {
		resp, err := http.Get(tr.srv.URL + "/status.json?history=1")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var s statusSnapshot
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
			return err
		}
		if len(s.History) == 0 || s.Sample == nil {
			return fmt.Errorf("no history yet: %+v", s.History)
		}
		if s.Process.Goroutines <= 0 || s.Process.MemoryBytes == 0 || s.Process.HeapBytes == 0 {
			return fmt.Errorf("process: %+v", s.Process)
		}
		hist = s.History
		return nil
	})
	// Without ?history=1 the history is not sent (the stream sends a
	// snapshot every second).
	if _, raw := mustStatus(t, tr, ""); strings.Contains(raw, `"history"`) {
		t.Fatalf("history without asking: %s", raw)
	}

	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "")
	waitSession(t, tr.Relay, SessionKey{b.num, ""}, true)
	tr.status.hist.sample() // the interval starts here
	const n = 20
	for i := range n {
		ca.send(b.num, "", fmt.Sprint("m", i))
		cb.expectPayload(fmt.Sprint("m", i))
	}
	tr.status.hist.sample()
	s, raw := mustStatus(t, tr, "")
	if s.Sample == nil || s.Sample.In <= 0 || s.Sample.Out <= 0 || s.Sample.Sessions != 2 {
		t.Fatalf("latest sample after traffic: %s", raw)
	}
	if s.Latency.Count != n || s.Latency.P50 == nil || s.Latency.P99 == nil ||
		*s.Latency.P50 <= 0 || *s.Latency.P99 < *s.Latency.P50 || s.Latency.Window <= 0 {
		t.Fatalf("latency over %d envelopes: %s", n, raw)
	}
	if s.Sample.P50 == nil || *s.Sample.P50 != *s.Latency.P50 {
		t.Fatalf("sample and latency disagree: %s", raw)
	}
	// An interval without envelopes has no latency (null, not 0).
	tr.status.hist.sample()
	if s, raw := mustStatus(t, tr, ""); s.Latency.P50 != nil || s.Latency.Count != 0 ||
		!strings.Contains(raw, `"p50_seconds":null`) {
		t.Fatalf("latency of an idle interval: %s", raw)
	}

	// The ring is bounded: the oldest samples go, order is kept.
	for range statusHistoryLen + 10 {
		tr.status.hist.sample()
	}
	all := tr.status.hist.history()
	if len(all) != statusHistoryLen {
		t.Fatalf("%d samples kept, want %d", len(all), statusHistoryLen)
	}
	for i := 1; i < len(all); i++ {
		if all[i].Time.Before(all[i-1].Time) {
			t.Fatalf("history out of order at %d: %v after %v", i, all[i].Time, all[i-1].Time)
		}
	}
	if all[0].Time.Equal(hist[0].Time) {
		t.Fatalf("the first sample was kept past the bound")
	}
}

// TestStatusHealth: the registrar and a Redis store are checked; the
// public view says ok or error, only the admin view says what error.
func TestStatusHealth(t *testing.T) {
	reg := startRegistrar(t)
	srv := redistest.Start(t, nil)
	store := newRedisStore(t, srv, &StoreOptions{Prefix: fmt.Sprintf("health%d:", time.Now().UnixNano())})
	tr := startRelay(t, reg, &Options{AdminToken: "sekret", Store: store}, nil, nil)
	byName := func(list []healthStatus) map[string]healthStatus {
		m := map[string]healthStatus{}
		for _, h := range list {
			m[h.Name] = h
		}
		return m
	}
	waitFor(t, 20*time.Second, func() error {
		s, raw := mustStatus(t, tr, "")
		h := byName(s.Health)
		if len(h) != 2 || !h["registrar"].OK || !h["redis"].OK || h["registrar"].CheckedAt == nil ||
			h["redis"].CheckedAt == nil || h["redis"].Since == nil {
			return fmt.Errorf("health: %s", raw)
		}
		return nil
	})

	srv.Kill()
	reg.srv.Close()
	tr.status.hist.check(context.Background())
	s, raw := mustStatus(t, tr, "")
	for name, h := range byName(s.Health) {
		if h.OK || h.Error != "" {
			t.Fatalf("public %s health after its server went away: %s", name, raw)
		}
	}
	checkPublic(t, raw, srv.Addr, strings.TrimPrefix(reg.srv.URL, "http://"))
	adm, raw := mustStatus(t, tr, "sekret")
	for name, h := range byName(adm.Health) {
		if h.OK || h.Error == "" {
			t.Fatalf("admin %s health after its server went away: %s", name, raw)
		}
	}

	// A memory store and a Directory that cannot be pinged: no checks.
	tr2 := startRelay(t, reg, &Options{Directory: plainDirectory{reg.client}}, nil, nil)
	if s, raw := mustStatus(t, tr2, ""); len(s.Health) != 0 || !strings.Contains(raw, `"health":[]`) {
		t.Fatalf("health without checks: %s", raw)
	}
}

// plainDirectory hides the client's Ping.
type plainDirectory struct{ d Directory }

func (p plainDirectory) Twin(ctx context.Context, id uint32) (*registrar.Twin, error) {
	return p.d.Twin(ctx, id)
}

// TestStatusSessions: the admin view lists per-session counters, sorted
// and paged by the server, bounded; bad parameters get 400 naming them.
func TestStatusSessions(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{AdminToken: "sekret"}, ln, nil)
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "")
	var others []*client
	for i := range 5 {
		others = append(others, dial(t, tr, b, fmt.Sprint("s", i)))
	}
	for i := range 5 {
		waitSession(t, tr.Relay, SessionKey{b.num, fmt.Sprint("s", i)}, true)
	}
	_ = others
	const n = 7
	for i := range n {
		ca.send(b.num, "", fmt.Sprint("m", i))
		cb.expectPayload(fmt.Sprint("m", i))
	}
	ca.send(424242, "", "nobody") // unknown twin: a drop, answered with an error
	ca.recv()

	get := func(query string) (statusSnapshot, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", tr.srv.URL+"/status.json"+query, nil)
		req.Header.Set("Authorization", "Bearer sekret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var s statusSnapshot
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", query, resp.StatusCode, body)
		}
		json.Unmarshal(body, &s)
		return s, string(body)
	}
	waitFor(t, 20*time.Second, func() error {
		s, raw := get("?sort=in&desc=1")
		if s.SessionsTotal != 7 || len(s.Sessions) != 7 {
			return fmt.Errorf("sessions: %s", raw)
		}
		x := s.Sessions[0] // a: the most envelopes in
		if x.Twin != a.num || x.MessagesIn != n+1 || x.Dropped != 1 || x.BytesIn == 0 || x.MessagesOut != 1 {
			return fmt.Errorf("a's session: %+v", x)
		}
		y := s.Sessions[slices.IndexFunc(s.Sessions, func(s SessionInfo) bool { return s.Twin == b.num && s.SID == "" })]
		if y.MessagesOut != n || y.BytesOut == 0 || y.MessagesIn != 0 || y.Dropped != 0 {
			return fmt.Errorf("b's session: %+v", y)
		}
		return nil
	})

	// Pages: by sid, two at a time, cover every session once.
	var seen []string
	for off := 0; ; off += 2 {
		s, raw := get(fmt.Sprintf("?sort=sid&limit=2&offset=%d", off))
		if s.SessionsTotal != 7 || s.SessionsOffset != min(off, 7) || len(s.Sessions) > 2 {
			t.Fatalf("page at %d: %s", off, raw)
		}
		if len(s.Sessions) == 0 {
			break
		}
		for _, x := range s.Sessions {
			seen = append(seen, fmt.Sprint(x.Twin, "/", x.SID))
		}
	}
	if len(seen) != 7 || len(slices.Compact(slices.Sorted(slices.Values(seen)))) != 7 {
		t.Fatalf("pages listed %v", seen)
	}
	if s, _ := get("?sort=sid&desc=1&limit=1"); s.Sessions[0].SID != "s4" {
		t.Fatalf("sid descending starts with %+v", s.Sessions[0])
	}
	if s, _ := get(""); len(s.Sessions) != 7 || s.Sessions[0].Twin > s.Sessions[6].Twin {
		t.Fatalf("default order: %+v", s.Sessions)
	}

	for _, q := range []string{"?sort=nope", "?limit=0", "?limit=1001", "?offset=-1", "?offset=x", "?desc=maybe", "?history=2"} {
		req, _ := http.NewRequest("GET", tr.srv.URL+"/status.json"+q, nil)
		req.Header.Set("Authorization", "Bearer sekret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		name := strings.TrimLeft(strings.SplitN(q, "=", 2)[0], "?")
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), name) {
			t.Fatalf("%s: %d %s", q, resp.StatusCode, body)
		}
	}
}

// TestDocsListDropReasons: docs/operations.md names every reason of
// rmb_relay_dropped_total, refused_total and routed_total.
func TestDocsListDropReasons(t *testing.T) {
	b, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i := strings.Index(doc, "`routed_total{result=")
	if i < 0 || !strings.Contains(doc[i:], "`dropped_total{reason}`") {
		t.Fatal("docs/operations.md does not list routed_total{result} and dropped_total{reason}")
	}
	list := doc[i:]
	list = list[:strings.Index(list, "`sessions`")]
	words := map[string]bool{}
	for _, w := range regexp.MustCompile(`[a-z_]+`).FindAllString(list, -1) {
		words[w] = true
	}
	for _, names := range [][]string{dropReasonNames[:], refuseReasonNames[:], routeResultNames[:]} {
		for _, n := range names {
			if !words[n] {
				t.Errorf("docs/operations.md does not list the reason %q of the relay's metrics", n)
			}
		}
	}
}
