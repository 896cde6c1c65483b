package redisapi

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ParseURL reads the Redis addresses rmb-peer accepts: redis://[user:pass@]host:port[/db],
// rediss://..., tcp://host:port, unix:///path/to/socket, or a bare host:port.
func ParseURL(raw string) (*redis.Options, error) {
	switch {
	case strings.HasPrefix(raw, "redis://"), strings.HasPrefix(raw, "rediss://"), strings.HasPrefix(raw, "unix://"):
		o, err := redis.ParseURL(raw)
		if err != nil {
			return nil, fmt.Errorf("redis address %q: %w", raw, err)
		}
		return o, nil
	case strings.HasPrefix(raw, "tcp://"):
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("redis address %q: want tcp://host:port", raw)
		}
		return &redis.Options{Addr: u.Host}, nil
	case raw != "" && !strings.Contains(raw, "://"):
		return &redis.Options{Addr: raw}, nil
	}
	return nil, fmt.Errorf("redis address %q: want redis://, tcp://host:port or unix:///path", raw)
}
