package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/redisapi"
)

func init() {
	register("call", "call a command on one or more twins through the local peer", call)
	register("serve", "serve a command through the local peer (echo by default)", serve)
}

const defaultRedis = "redis://127.0.0.1:6379"

func redisClient(url string) (*redis.Client, error) {
	o, err := redisapi.ParseURL(url)
	if err != nil {
		return nil, err
	}
	return redis.NewClient(o), nil
}

func parseTwins(s string) ([]uint32, error) {
	var out []uint32
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q is not a twin id", f)
		}
		out = append(out, uint32(n))
	}
	if len(out) == 0 {
		return nil, errors.New("no destination twin")
	}
	return out, nil
}

func call(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "call", "--dst TWIN[,TWIN...] --cmd COMMAND [--data JSON] [--ttl 60s] [--redis URL]")
	dst := fs.String("dst", "", "destination twin ids, comma separated (required)")
	cmd := fs.String("cmd", "", "command to call, e.g. calc.add (required)")
	data := fs.String("data", "", "payload, sent as is")
	ttl := &ttlFlag{d: 60 * time.Second}
	fs.Var(ttl, "ttl", "time to live of the request, seconds (30) or a duration (90s), 1s to 30m; the call waits this long (plus 5s for the peer's timeout answer)")
	sid := fs.String("session", "", "destination session id")
	tags := fs.String("tags", "", "envelope tags, e.g. fail-fast")
	redisURL := fs.String("redis", defaultRedis, "Redis of the local rmb-peer")
	asJSON := fs.Bool("json", false, "print the responses as JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	twins, err := parseTwins(*dst)
	if err != nil || *cmd == "" {
		if err == nil {
			err = errors.New("--cmd is required")
		}
		fmt.Fprintf(e.stderr, "rmb call: %v\n", err)
		fs.Usage()
		return 2
	}
	ttlSecs, note, err := ttl.check("ttl")
	if err != nil {
		fmt.Fprintf(e.stderr, "rmb call: %v\n", err)
		return 2
	}
	if note != "" {
		fmt.Fprintf(e.stderr, "rmb call: %s\n", note)
	}
	rdb, err := redisClient(*redisURL)
	if err != nil {
		return e.errorf("%v", err)
	}
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return e.errorf("cannot reach the peer's Redis at %s: %v", redisapi.RedactURL(*redisURL), err)
	}
	c := redisapi.NewClient(rdb)
	out, err := c.Call(ctx, twins, *cmd, []byte(*data), &redisapi.CallOptions{TTL: time.Duration(ttlSecs) * time.Second, Session: *sid, Tags: *tags})
	failed := false
	if *asJSON {
		printJSON(e, out)
	}
	for _, r := range out {
		if r.Error != nil {
			failed = true
		}
		if *asJSON {
			continue
		}
		if r.Error != nil {
			fmt.Fprintf(e.stdout, "%s: error %d: %s\n", r.Source, r.Error.Code, r.Error.Message)
			continue
		}
		p, perr := r.Payload()
		if perr != nil {
			failed = true
			fmt.Fprintf(e.stdout, "%s: %v\n", r.Source, perr)
			continue
		}
		if len(twins) == 1 {
			fmt.Fprintf(e.stdout, "%s\n", p)
		} else {
			fmt.Fprintf(e.stdout, "%s: %s\n", r.Source, p)
		}
	}
	if err != nil {
		return e.errorf("%v (%d of %d answered)", err, len(out), len(twins))
	}
	if failed {
		return 1
	}
	return 0
}

func serve(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "serve", "[--cmd echo] [--redis URL]")
	cmd := fs.String("cmd", "echo", "command to serve; requests are answered with their own payload")
	redisURL := fs.String("redis", defaultRedis, "Redis of the local rmb-peer")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	rdb, err := redisClient(*redisURL)
	if err != nil {
		return e.errorf("%v", err)
	}
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return e.errorf("cannot reach the peer's Redis at %s: %v", redisapi.RedactURL(*redisURL), err)
	}
	fmt.Fprintf(e.stderr, "serving %s on %s (Ctrl-C to stop)\n", *cmd, redisapi.RedactURL(*redisURL))
	err = redisapi.NewClient(rdb).Serve(ctx, *cmd, func(ctx context.Context, req *redisapi.IncomingRequest, p []byte) ([]byte, error) {
		fmt.Fprintf(e.stdout, "%s from %s: %s\n", req.Command, req.Source, p)
		return p, nil
	}, nil)
	if err != nil {
		return e.errorf("%v", err)
	}
	return 0
}
