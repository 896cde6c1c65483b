package redisapi

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ParseURL reads the Redis addresses rmb-peer accepts: redis://[user:pass@]host:port[/db],
// rediss://..., tcp://host:port, unix:///path/to/socket, or a bare host:port.
// Its errors show the address with the password replaced (RedactURL).
func ParseURL(raw string) (*redis.Options, error) {
	shown := RedactURL(raw)
	switch {
	case strings.HasPrefix(raw, "redis://"), strings.HasPrefix(raw, "rediss://"), strings.HasPrefix(raw, "unix://"):
		o, err := redis.ParseURL(raw)
		if err != nil {
			return nil, fmt.Errorf("redis address %q: %s", shown, RedactPassword(err.Error(), raw))
		}
		return o, nil
	case strings.HasPrefix(raw, "tcp://"):
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("redis address %q: want tcp://host:port", shown)
		}
		return &redis.Options{Addr: u.Host}, nil
	case raw != "" && !strings.Contains(raw, "://"):
		return &redis.Options{Addr: raw}, nil
	}
	return nil, fmt.Errorf("redis address %q: want redis://, tcp://host:port or unix:///path", shown)
}

// RedactURL returns a Redis URL fit for logs and error texts: its
// password replaced by "xxxxx". A URL that does not parse is not shown.
func RedactURL(raw string) string {
	if !strings.Contains(raw, "://") {
		return raw // host:port holds no password
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// RedactPassword replaces the password of the URL raw in s.
func RedactPassword(s, raw string) string {
	if u, err := url.Parse(raw); err == nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			s = strings.ReplaceAll(s, pw, "xxxxx")
		}
	}
	return s
}
