package relay

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/rmb-go/rmb/pkg/envelope"
)

// Policy is the relay's access policy. A nil Policy, or nil fields, allow
// everything. A Policy is immutable once given to the relay; SetPolicy
// swaps it atomically.
type Policy struct {
	// Allow lists the twins that may connect; nil: every twin.
	Allow *TwinSet
	// Rules say which source twins may send requests to which
	// destination twins; nil: every route. They govern requests only: an
	// answer (response or error) goes back whatever the rules say, so the
	// answer to a request that was allowed is delivered. (A peer takes an
	// answer only to a request it sent.)
	Rules *Rules
	// Twins restricts single twins further (the "twins" section of the
	// allow list); a twin without an entry is not restricted.
	Twins map[uint32]*TwinAccess
}

// TwinAccess is what the relay allows one twin beyond the allow list.
type TwinAccess struct {
	// Networks, when not empty, are the only source networks the twin
	// may connect from (the client's address, through trusted proxies).
	// A change reloaded closes its sessions from elsewhere.
	Networks []netip.Prefix
	// NoBroadcast denies the twin envelopes to every session of a twin
	// (destination connection "*"): publishing where the relay makes the
	// copies.
	NoBroadcast bool
}

// fromNetwork reports whether twin may connect from addr.
func (p *Policy) fromNetwork(twin uint32, addr netip.Addr) bool {
	if p == nil || p.Twins == nil {
		return true
	}
	a := p.Twins[twin]
	if a == nil || len(a.Networks) == 0 {
		return true
	}
	for _, n := range a.Networks {
		if n.Contains(addr) {
			return true
		}
	}
	return false
}

// mayBroadcast reports whether twin may send to connection "*".
func (p *Policy) mayBroadcast(twin uint32) bool {
	if p == nil || p.Twins == nil {
		return true
	}
	a := p.Twins[twin]
	return a == nil || !a.NoBroadcast
}

// TwinSet is a set of twin ids, or every twin ("*").
type TwinSet struct {
	all   bool
	twins map[uint32]bool
}

// Contains reports whether twin is in the set.
func (s *TwinSet) Contains(twin uint32) bool {
	return s != nil && (s.all || s.twins[twin])
}

// Rules is an ordered list of allow rules; an envelope may pass when any
// rule matches its source and destination twins. An empty list denies
// everything.
type Rules struct {
	rules []rule
}

type rule struct{ from, to *TwinSet }

// Allowed reports whether src may send to dst.
func (r *Rules) Allowed(src, dst uint32) bool {
	for _, ru := range r.rules {
		if ru.from.Contains(src) && ru.to.Contains(dst) {
			return true
		}
	}
	return false
}

func (p *Policy) mayConnect(twin uint32) bool {
	return p == nil || p.Allow == nil || p.Allow.Contains(twin)
}

func (p *Policy) mayRoute(src, dst uint32) bool {
	return p == nil || p.Rules == nil || p.Rules.Allowed(src, dst)
}

// allows reports whether the rules let an envelope through: a request when
// its route is allowed, anything else always. Every path that takes
// envelopes in applies it.
func (p *Policy) allows(rt *envelope.Routing) bool {
	if len(rt.Destination.Session) == 1 && rt.Destination.Session[0] == '*' && !p.mayBroadcast(rt.Source.Twin) {
		return false
	}
	return rt.Kind != envelope.KindRequest || p.mayRoute(rt.Source.Twin, rt.Destination.Twin)
}

// ParseTwinAccess reads the "twins" section of an allow list: for each
// twin id, the source networks it may connect from and whether it may
// send to every session of a twin (connection "*"):
//
//	allow: "*"
//	twins:
//	  12:
//	    networks: [10.0.0.0/8, "2001:db8::/32"]
//	    broadcast: false
//
// A top-level list (the short form of an allow list) has no such section.
func ParseTwinAccess(b []byte) (map[uint32]*TwinAccess, error) {
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("relay: allow list: %w", err)
	}
	m, ok := doc.(map[string]any)
	if !ok {
		return nil, nil
	}
	for k := range m {
		if k != "allow" && k != "twins" {
			return nil, fmt.Errorf("relay: allow list: unknown key %q (want allow, twins)", k)
		}
	}
	if m["twins"] == nil {
		return nil, nil
	}
	twins := map[string]any{}
	switch x := m["twins"].(type) {
	case map[string]any:
		twins = x
	case map[any]any: // twin ids as YAML integers
		for k, v := range x {
			twins[fmt.Sprint(k)] = v
		}
	default:
		return nil, errors.New("relay: allow list: twins: want a map of twin id to {networks, broadcast}")
	}
	out := make(map[uint32]*TwinAccess, len(twins))
	for key, v := range twins {
		n, err := strconv.ParseUint(strings.TrimSpace(key), 10, 32)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("relay: allow list: twins: %q is not a twin id", key)
		}
		e, ok := v.(map[string]any)
		if !ok && v != nil {
			return nil, fmt.Errorf("relay: allow list: twin %d: want a map with networks and/or broadcast", n)
		}
		a := &TwinAccess{}
		for k, x := range e {
			switch k {
			case "networks":
				list, ok := x.([]any)
				if !ok {
					list = []any{x}
				}
				for _, it := range list {
					str, _ := it.(string)
					pfx, err := netip.ParsePrefix(strings.TrimSpace(str))
					if err != nil {
						if ad, aerr := netip.ParseAddr(strings.TrimSpace(str)); aerr == nil {
							pfx, err = ad.Prefix(ad.BitLen())
						}
					}
					if err != nil {
						return nil, fmt.Errorf("relay: allow list: twin %d: networks: %v is not a CIDR network (10.0.0.0/8, 2001:db8::/32) or an address", n, it)
					}
					a.Networks = append(a.Networks, pfx.Masked())
				}
			case "broadcast":
				bv, ok := x.(bool)
				if !ok {
					return nil, fmt.Errorf("relay: allow list: twin %d: broadcast: want true or false", n)
				}
				a.NoBroadcast = !bv
			default:
				return nil, fmt.Errorf("relay: allow list: twin %d: unknown key %q (want networks, broadcast)", n, k)
			}
		}
		out[uint32(n)] = a
	}
	return out, nil
}

// ParseAllowList reads an allow list: a YAML list of twin ids, where "*"
// stands for every twin, either at the top level or under the key "allow"
// (a map with a "twins" section and no "allow" key allows every twin; see
// ParseTwinAccess):
//
//   - 12
//   - 42
func ParseAllowList(b []byte) (*TwinSet, error) {
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("relay: allow list: %w", err)
	}
	if m, ok := doc.(map[string]any); ok {
		_, hasAllow := m["allow"]
		if !hasAllow && m["twins"] != nil {
			// Only a twins section: it restricts twins, allows everyone.
			return &TwinSet{all: true}, nil
		}
		doc = m["allow"]
	}
	if doc == nil {
		return &TwinSet{twins: map[uint32]bool{}}, nil
	}
	s, err := parseTwinSet(doc)
	if err != nil {
		return nil, fmt.Errorf("relay: allow list: %w", err)
	}
	return s, nil
}

// ParseRules reads routing rules: a YAML list of {from, to} pairs, at the
// top level or under the key "rules". Each side is a twin id, "*", or a list
// of those:
//
//   - from: "*"
//     to: [7, 8]     # anyone may send to 7 and 8
//   - from: [7, 8]
//     to: "*"        # 7 and 8 may send to anyone
func ParseRules(b []byte) (*Rules, error) {
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("relay: rules: %w", err)
	}
	if m, ok := doc.(map[string]any); ok {
		doc = m["rules"]
	}
	rs := &Rules{}
	if doc == nil {
		return rs, nil
	}
	list, ok := doc.([]any)
	if !ok {
		return nil, errors.New("relay: rules: want a list of {from, to}")
	}
	for i, it := range list {
		m, ok := it.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("relay: rules: rule %d: want a map with from and to", i+1)
		}
		for k := range m {
			if k != "from" && k != "to" {
				return nil, fmt.Errorf("relay: rules: rule %d: unknown key %q", i+1, k)
			}
		}
		if m["from"] == nil || m["to"] == nil {
			return nil, fmt.Errorf("relay: rules: rule %d: needs from and to", i+1)
		}
		from, err := parseTwinSet(m["from"])
		if err != nil {
			return nil, fmt.Errorf("relay: rules: rule %d: from: %w", i+1, err)
		}
		to, err := parseTwinSet(m["to"])
		if err != nil {
			return nil, fmt.Errorf("relay: rules: rule %d: to: %w", i+1, err)
		}
		rs.rules = append(rs.rules, rule{from: from, to: to})
	}
	return rs, nil
}

func parseTwinSet(v any) (*TwinSet, error) {
	s := &TwinSet{twins: make(map[uint32]bool)}
	items, ok := v.([]any)
	if !ok {
		items = []any{v}
	}
	for _, it := range items {
		switch x := it.(type) {
		case int:
			if x <= 0 || int64(x) > int64(^uint32(0)) {
				return nil, fmt.Errorf("%d is not a twin id", x)
			}
			s.twins[uint32(x)] = true
		case string:
			x = strings.TrimSpace(x)
			if x == "*" {
				s.all = true
				continue
			}
			n, err := strconv.ParseUint(x, 10, 32)
			if err != nil || n == 0 {
				return nil, fmt.Errorf("%q is not a twin id or \"*\"", x)
			}
			s.twins[uint32(n)] = true
		default:
			return nil, fmt.Errorf("%v is not a twin id or \"*\"", it)
		}
	}
	return s, nil
}

// LoadPolicy reads the allow list and rules files; an empty name leaves
// that part of the policy open.
func LoadPolicy(allowFile, rulesFile string) (*Policy, error) {
	p := &Policy{}
	if allowFile != "" {
		b, err := os.ReadFile(allowFile)
		if err != nil {
			return nil, err
		}
		if p.Allow, err = ParseAllowList(b); err != nil {
			return nil, fmt.Errorf("%s: %w", allowFile, err)
		}
		if p.Twins, err = ParseTwinAccess(b); err != nil {
			return nil, fmt.Errorf("%s: %w", allowFile, err)
		}
	}
	if rulesFile != "" {
		b, err := os.ReadFile(rulesFile)
		if err != nil {
			return nil, err
		}
		if p.Rules, err = ParseRules(b); err != nil {
			return nil, fmt.Errorf("%s: %w", rulesFile, err)
		}
	}
	return p, nil
}

// SetPolicy replaces the access policy (nil allows everything). Sessions
// stay connected, except those of twins the new allow list no longer
// contains or that are connected from a network their twin may no longer
// use, which are closed (1008). Routing rules apply from the next
// envelope.
func (r *Relay) SetPolicy(p *Policy) {
	r.policy.Store(p)
	for _, s := range r.liveSessions(nil) {
		switch {
		case !p.mayConnect(s.key.Twin):
			s.log.Info("twin no longer allowed, closing session")
			s.close(statusRevoked, "twin not allowed on this relay")
		case s.ip.IsValid() && !p.fromNetwork(s.key.Twin, s.ip):
			s.log.Info("twin no longer allowed from this network, closing session", "addr", s.ip)
			s.close(statusRevoked, msgNetworkDenied)
		}
	}
}

// msgNetworkDenied answers a twin connecting from a network it may not use.
const msgNetworkDenied = "twin not allowed from this network"

// Policy returns the current access policy.
func (r *Relay) Policy() *Policy { return r.policy.Load() }
