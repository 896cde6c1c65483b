package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/redisapi"
)

func init() {
	register("deadletter", "list, show, requeue or drop dead-lettered messages", deadletter)
}

// A dead letter is named by a short hash of its JSON, not by its position:
// the peer pushes new entries while we look, which shifts positions.
func letterID(raw string) string {
	h := sha256.Sum256([]byte(raw))
	return hex.EncodeToString(h[:5])
}

type letter struct {
	id  string
	raw string
	dl  redisapi.DeadLetter
	err error // the entry itself is not JSON
}

func readLetters(ctx context.Context, rdb *redis.Client) ([]letter, error) {
	raws, err := rdb.LRange(ctx, redisapi.QueueDeadLetter, 0, -1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]letter, 0, len(raws))
	// The peer LPUSHes: the list is newest first; show oldest first.
	for i := len(raws) - 1; i >= 0; i-- {
		l := letter{id: letterID(raws[i]), raw: raws[i]}
		l.err = json.Unmarshal([]byte(raws[i]), &l.dl)
		out = append(out, l)
	}
	return out, nil
}

func deadletter(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "deadletter", "list|show ID|requeue ID...|--all [--ttl SECONDS]|drop ID...|--all [--redis URL] [--json]")
	redisURL := fs.String("redis", defaultRedis, "Redis of the local rmb-peer")
	asJSON := fs.Bool("json", false, "print JSON (list, show)")
	all := fs.Bool("all", false, "requeue or drop every entry")
	ttl := &ttlFlag{}
	fs.Var(ttl, "ttl", "requeue: the request's new time to live, seconds or a duration, 1s to 30m (default: its original exp)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	var ttlSecs int64
	if ttl.set {
		var note string
		var err error
		if ttlSecs, note, err = ttl.check("ttl"); err != nil {
			return e.errorf("%v", err)
		}
		if note != "" {
			fmt.Fprintf(e.stderr, "rmb deadletter: %s\n", note)
		}
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	action, ids := rest[0], rest[1:]
	if ttl.set && action != "requeue" {
		return e.errorf("--ttl applies to requeue only")
	}
	rdb, err := redisClient(*redisURL)
	if err != nil {
		return e.errorf("%v", err)
	}
	defer rdb.Close()
	letters, err := readLetters(ctx, rdb)
	if err != nil {
		return e.errorf("cannot read %s at %s: %v", redisapi.QueueDeadLetter, redisapi.RedactURL(*redisURL), err)
	}
	switch action {
	case "list":
		return listLetters(e, letters, *asJSON)
	case "show":
		if len(ids) != 1 {
			return e.errorf("show takes one ID (see rmb deadletter list)")
		}
		l, ok := findLetter(letters, ids[0])
		if !ok {
			return e.errorf("no dead letter %q", ids[0])
		}
		if *asJSON || l.err != nil {
			fmt.Fprintln(e.stdout, l.raw)
			return 0
		}
		b, _ := json.MarshalIndent(l.dl, "", "  ")
		fmt.Fprintf(e.stdout, "%s\n", b)
		return 0
	case "requeue", "drop":
		picked, code := pickLetters(e, letters, ids, *all)
		if code != 0 {
			return code
		}
		done := 0
		for _, l := range picked {
			if err := actOn(ctx, rdb, action, l, ttlSecs); err != nil {
				e.errorf("%s %s: %v", action, l.id, err)
				continue
			}
			done++
		}
		verb := map[string]string{"requeue": "requeued", "drop": "dropped"}[action]
		fmt.Fprintf(e.stdout, "%s %d of %d\n", verb, done, len(picked))
		if done != len(picked) {
			return 1
		}
		return 0
	}
	return e.errorf("unknown action %q: want list, show, requeue or drop", action)
}

func listLetters(e *env, letters []letter, asJSON bool) int {
	if asJSON {
		out := make([]map[string]any, 0, len(letters))
		for _, l := range letters {
			out = append(out, map[string]any{"id": l.id, "entry": json.RawMessage(l.raw)})
			if l.err != nil {
				out[len(out)-1]["entry"] = l.raw
			}
		}
		return printJSON(e, out)
	}
	if len(letters) == 0 {
		fmt.Fprintln(e.stdout, "no dead letters")
		return 0
	}
	w := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tTIME\tQUEUE\tCODE\tREASON")
	for _, l := range letters {
		if l.err != nil {
			fmt.Fprintf(w, "%s\t-\t-\t-\tentry is not JSON: %.60q\n", l.id, l.raw)
			continue
		}
		code := "-"
		if l.dl.Code != 0 {
			code = fmt.Sprint(l.dl.Code)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", l.id, l.dl.Time.Local().Format(time.DateTime), l.dl.Queue, code, oneLine(l.dl.Reason, 80))
	}
	w.Flush()
	return 0
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}

func findLetter(letters []letter, id string) (letter, bool) {
	for _, l := range letters {
		if l.id == id {
			return l, true
		}
	}
	return letter{}, false
}

func pickLetters(e *env, letters []letter, ids []string, all bool) ([]letter, int) {
	if all {
		if len(ids) > 0 {
			return nil, e.errorf("give IDs or --all, not both")
		}
		return letters, 0
	}
	if len(ids) == 0 {
		return nil, e.errorf("give one or more IDs (see rmb deadletter list) or --all")
	}
	var out []letter
	for _, id := range ids {
		l, ok := findLetter(letters, id)
		if !ok {
			return nil, e.errorf("no dead letter %q", id)
		}
		out = append(out, l)
	}
	return out, 0
}

// requeueScript removes ARGV[1] from the dead-letter list KEYS[1] and, only
// if it was there, pushes the original message ARGV[2] back on KEYS[2]: an
// entry is requeued once even when two operators act on it at once.
var requeueScript = redis.NewScript(`
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
`)

// actOn drops an entry, or pushes its original message back on its queue
// and drops it, atomically. A requeued message is refreshed first (see
// refresh).
func actOn(ctx context.Context, rdb *redis.Client, action string, l letter, ttlSecs int64) error {
	var n int64
	var err error
	if action == "requeue" {
		if l.err != nil || l.dl.Queue == "" || l.dl.Message == "" {
			return fmt.Errorf("entry does not name a queue and a message; drop it instead")
		}
		msg, rerr := refresh(l.dl.Message, time.Now(), ttlSecs)
		if rerr != nil {
			return rerr
		}
		n, err = requeueScript.Run(ctx, rdb, []string{redisapi.QueueDeadLetter, l.dl.Queue}, l.raw, msg).Int64()
	} else {
		n, err = rdb.LRem(ctx, redisapi.QueueDeadLetter, 1, l.raw).Result()
	}
	if err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("entry vanished while we worked (someone else took it)")
	}
	return nil
}

// refresh gives a dead-lettered message a fresh "now", so that the peer
// counts its TTL from the requeue and not from the first attempt (which
// would time it out again at once, as a 504), and, when ttlSecs > 0, a new
// "exp". Other fields stay as they were. A message that is not a JSON
// object, or has no "now" (nothing to refresh), is requeued verbatim
// unless a new TTL was asked for, which needs a request with an "exp".
func refresh(msg string, now time.Time, ttlSecs int64) (string, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(msg), &m); err != nil || m == nil {
		if ttlSecs > 0 {
			return "", fmt.Errorf("message is not a JSON object: --ttl cannot apply")
		}
		return msg, nil
	}
	_, hasNow := m["now"]
	_, hasExp := m["exp"]
	if ttlSecs > 0 && !hasExp {
		return "", fmt.Errorf("message has no exp (not a request): --ttl cannot apply")
	}
	if !hasNow && ttlSecs == 0 {
		return msg, nil
	}
	m["now"] = json.RawMessage(strconv.FormatInt(now.Unix(), 10))
	if ttlSecs > 0 {
		m["exp"] = json.RawMessage(strconv.FormatInt(ttlSecs, 10))
	}
	b, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	return string(b), nil
}
