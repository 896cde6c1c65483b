package redisapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

func newRedis(t *testing.T) *redis.Client {
	s := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// TestCallWireFormat plays the peer with raw go-redis: it checks the exact
// JSON the client pushes and answers for two destinations.
func TestCallWireFormat(t *testing.T) {
	for _, rt := range []time.Duration{0, 500 * time.Millisecond} {
		t.Run(fmt.Sprint("read timeout ", rt), func(t *testing.T) {
			s := redistest.Start(t, nil)
			rdb := redis.NewClient(&redis.Options{Addr: s.Addr, ReadTimeout: rt})
			t.Cleanup(func() { rdb.Close() })
			testCallWireFormat(t, rdb)
		})
	}
}

func testCallWireFormat(t *testing.T, rdb *redis.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		res, err := rdb.BRPop(ctx, 5*time.Second, redisapi.QueueLocal).Result()
		if err != nil {
			return
		}
		var m map[string]any
		json.Unmarshal([]byte(res[1]), &m)
		for _, src := range []string{"55", "66"} {
			body, _ := json.Marshal(map[string]any{
				"ver": 1, "ref": m["ref"], "dat": "Mw==", "src": src,
				"shm": "application/json", "now": time.Now().Unix(), "err": nil,
			})
			rdb.LPush(ctx, m["ret"].(string), body)
		}
		// Echo the request so the test can check its fields.
		rdb.LPush(ctx, "seen", res[1])
	}()
	c := redisapi.NewClient(rdb)
	out, err := c.Call(ctx, []uint32{55, 66}, "calc.add", []byte("[1,2]"), &redisapi.CallOptions{TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].Source != "55" || out[1].Source != "66" {
		t.Fatalf("responses %+v", out)
	}
	if p, _ := out[0].Payload(); string(p) != "3" {
		t.Fatalf("payload %q", p)
	}
	seen, err := rdb.BRPop(ctx, 5*time.Second, "seen").Result()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(seen[1]), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ver", "ref", "cmd", "exp", "dat", "tag", "dst", "ret", "shm", "now"} {
		if _, ok := m[k]; !ok {
			t.Errorf("request JSON lacks %q: %s", k, seen[1])
		}
	}
	if string(m["dat"]) != `"WzEsMl0="` || string(m["dst"]) != "[55,66]" || string(m["exp"]) != "30" || string(m["cmd"]) != `"calc.add"` {
		t.Errorf("request JSON %s", seen[1])
	}
	if n, _ := rdb.Exists(ctx, string(m["ret"][1:len(m["ret"])-1])).Result(); n != 0 {
		t.Error("reply queue left behind")
	}
}

func TestCallTimeout(t *testing.T) {
	rdb := newRedis(t)
	c := redisapi.NewClient(rdb)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := c.Call(ctx, []uint32{5}, "x", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if _, err := c.Call(context.Background(), nil, "x", nil, nil); err == nil {
		t.Fatal("call with no destination accepted")
	}
}

// TestServe runs with the default client, which sends each answer in the
// same round trip as the wait for the next request, and with a short read
// timeout, which makes it use two.
func TestServe(t *testing.T) {
	for _, rt := range []time.Duration{0, 500 * time.Millisecond} {
		t.Run(fmt.Sprint("read timeout ", rt), func(t *testing.T) {
			s := redistest.Start(t, nil)
			rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
			t.Cleanup(func() { rdb.Close() })
			svc := redis.NewClient(&redis.Options{Addr: s.Addr, ReadTimeout: rt})
			t.Cleanup(func() { svc.Close() })
			trips := &redistest.RoundTrips{}
			svc.AddHook(trips)
			testServe(t, rdb, svc)
			// 4 requests and the garbage: with shared round trips, one
			// per request plus the first wait (and idle waits of 1 s).
			t.Logf("%d round trips", trips.N())
			if rt == 0 && trips.N() > 6 {
				t.Errorf("%d round trips for 4 requests: answers do not share them", trips.N())
			}
		})
	}
}

func testServe(t *testing.T, rdb, svc *redis.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := redisapi.NewClient(svc)
	go c.Serve(ctx, "echo", func(ctx context.Context, req *redisapi.IncomingRequest, p []byte) ([]byte, error) {
		if string(p) == "fail" {
			return nil, &redisapi.Error{Code: 42, Message: "asked to fail"}
		}
		return p, nil
	}, nil)
	q := redisapi.CommandQueue("echo")
	rdb.LPush(ctx, q, "{garbage") // skipped, the service keeps going
	push := func(ref, dat string) {
		b, _ := json.Marshal(redisapi.IncomingRequest{Version: 1, Ref: ref, Source: "41", Command: "echo", Data: dat, ReplyTo: redisapi.QueueReply})
		rdb.LPush(ctx, q, b)
	}
	push("r1", "aGk=")       // "hi"
	push("r2", "ZmFpbA==")   // "fail"
	push("r3", "not base64") // bad dat -> 500
	push("r4", "aGk=")
	want := map[string]func(r redisapi.OutgoingResponse) bool{
		"r1": func(r redisapi.OutgoingResponse) bool {
			return r.Error == nil && r.Data == "aGk=" && r.Destination == "41"
		},
		"r2": func(r redisapi.OutgoingResponse) bool { return r.Error != nil && r.Error.Code == 42 },
		"r3": func(r redisapi.OutgoingResponse) bool { return r.Error != nil && r.Error.Code == 500 },
		"r4": func(r redisapi.OutgoingResponse) bool { return r.Error == nil && r.Data == "aGk=" },
	}
	for range want {
		res, err := rdb.BRPop(ctx, 5*time.Second, redisapi.QueueReply).Result()
		if err != nil {
			t.Fatal(err)
		}
		var r redisapi.OutgoingResponse
		if err := json.Unmarshal([]byte(res[1]), &r); err != nil {
			t.Fatal(err)
		}
		if check, ok := want[r.Ref]; !ok || !check(r) {
			t.Errorf("unexpected response %s", res[1])
		}
	}
}

func TestParseURL(t *testing.T) {
	for in, want := range map[string]string{
		"redis://127.0.0.1:6379":   "127.0.0.1:6379",
		"redis://localhost:7000/2": "localhost:7000",
		"tcp://10.1.2.3:6380":      "10.1.2.3:6380",
		"unix:///run/redis.sock":   "/run/redis.sock",
		"127.0.0.1:6379":           "127.0.0.1:6379",
	} {
		o, err := redisapi.ParseURL(in)
		if err != nil || o.Addr != want {
			t.Errorf("ParseURL(%q) = %v, %v; want addr %s", in, o, err, want)
		}
	}
	for _, in := range []string{"", "http://x", "tcp://", "redis://:notaport"} {
		if _, err := redisapi.ParseURL(in); err == nil {
			t.Errorf("ParseURL(%q) accepted", in)
		}
	}
}

// TestCallSkipsForgedResponses: what lands on the reply queue with
// another ref, from a twin that is not a destination, or from a
// destination that already answered is not taken for an answer.
func TestCallSkipsForgedResponses(t *testing.T) {
	rdb := newRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		res, err := rdb.BRPop(ctx, 5*time.Second, redisapi.QueueLocal).Result()
		if err != nil {
			return
		}
		var m map[string]any
		json.Unmarshal([]byte(res[1]), &m)
		push := func(ref any, src, dat string) {
			body, _ := json.Marshal(map[string]any{"ver": 1, "ref": ref, "dat": dat, "src": src,
				"shm": "", "now": time.Now().Unix(), "err": nil})
			rdb.LPush(ctx, m["ret"].(string), body)
		}
		push("someone-else", "55", "Zm9yZ2Vk") // another ref
		push(m["ref"], "77", "Zm9yZ2Vk")       // not a destination
		push(m["ref"], "55", "cmVhbA==")       // the answer of 55
		push(m["ref"], "55", "Zm9yZ2Vk")       // 55 again
		push(m["ref"], "66", "cmVhbA==")       // the answer of 66
	}()
	out, err := redisapi.NewClient(rdb).Call(ctx, []uint32{55, 66}, "calc.add", nil, &redisapi.CallOptions{TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].Source != "55" || out[1].Source != "66" {
		t.Fatalf("responses %+v", out)
	}
	for _, r := range out {
		if p, _ := r.Payload(); string(p) != "real" {
			t.Errorf("forged response taken: %+v", r)
		}
	}
}
