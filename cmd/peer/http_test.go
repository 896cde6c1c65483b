package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rmb-peer --http unix:///path serves the JSON API over HTTP: a program
// calls its own twin's rmb.info with curl's equivalent.
func TestHTTPFlagServesAPI(t *testing.T) {
	e := newEnv(t)
	sock := filepath.Join(t.TempDir(), "rmb.sock")
	m, logs := startMain(t, e, map[string]string{MnemonicEnv: newMnemonic(t)}, "--http", "unix://"+sock)
	if m.HTTPListenAddr() != sock {
		t.Fatalf("HTTPListenAddr %q", m.HTTPListenAddr())
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return new(net.Dialer).DialContext(ctx, "unix", sock)
		}}}
	twin := m.Peer().Twin()
	body := fmt.Sprintf(`{"ver":1,"ref":"r1","cmd":"rmb.info","exp":20,"dat":"","dst":[%d]}`, twin)
	resp, err := c.Post("http://rmb/call", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("%v\n%s", err, logs)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var rs []struct {
		Ref string `json:"ref"`
		Dat string `json:"dat"`
		Src string `json:"src"`
		Err any    `json:"err"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(b, &rs) != nil || len(rs) != 1 || rs[0].Err != nil {
		t.Fatalf("/call rmb.info: %d %s", resp.StatusCode, b)
	}
	dat, _ := base64.StdEncoding.DecodeString(rs[0].Dat)
	var info struct {
		Implementation string `json:"implementation"`
		Twin           uint32 `json:"twin"`
	}
	if json.Unmarshal(dat, &info) != nil || info.Implementation != "rmb-go" || info.Twin != twin || rs[0].Ref != "r1" {
		t.Fatalf("rmb.info: %s", dat)
	}
	resp, err = c.Post("http://rmb/call", "application/json", strings.NewReader("{"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("bad JSON: %d", resp.StatusCode)
	}
	m.Close()
	if _, err := c.Get("http://rmb/serve?cmd=x&wait=0"); err == nil {
		t.Fatal("HTTP API still served after Close")
	}
}

func TestHTTPFlagRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:8080", "192.0.2.1:80", "unix://relative"} {
		m := NewMain()
		var out syncBuffer
		m.Stderr = &out
		m.Getenv = func(string) string { return "" }
		err := m.ParseFlags([]string{"--relay", "ws://r.example", "--registrar", "http://reg.example", "--http", addr})
		if err == nil || !strings.Contains(out.String(), "http:") {
			t.Errorf("--http %s: %v\n%s", addr, err, out.String())
		}
	}
}
