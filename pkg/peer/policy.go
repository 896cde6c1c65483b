package peer

import (
	"fmt"
	"os"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// Policy decides which source twins may call which commands. It is loaded
// from YAML:
//
//	default: allow          # or deny; applies when no rule matches
//	rules:
//	  - commands: ["calc.*"] # globs: * is any run of characters, / and . included
//	    allow: [41, 55]      # twin ids, or "*" for any
//	  - commands: ["admin.*", "rmb.*"]
//	    deny: ["*"]
//
// The first rule with a matching command decides: a twin in deny is
// refused; otherwise a twin in allow is accepted; a rule with only deny
// accepts everyone else and a rule with an allow list refuses everyone
// else. A Policy is immutable once built; swap it with Peer.ReloadPolicy.
//
// In a glob, '*' matches any run of characters including '/' and '.',
// '?' any one character; '[', ']' and '\' are refused (see Globs in
// command.go). So "*" is every command and "calc.*" every command that
// starts with "calc.".
type Policy struct {
	Default string       `yaml:"default"`
	Rules   []PolicyRule `yaml:"rules"`
	// Topics decide who may subscribe to this twin's topics
	// (topics_policy.go).
	Topics []TopicRule `yaml:"topics"`

	defaultAllow bool
}

// PolicyRule is one rule of a Policy.
type PolicyRule struct {
	Commands []string `yaml:"commands"`
	Allow    []string `yaml:"allow"`
	Deny     []string `yaml:"deny"`

	allow, deny twinSet
}

type twinSet struct {
	any   bool
	twins map[uint32]bool
}

func (s twinSet) has(t uint32) bool { return s.any || s.twins[t] }
func (s twinSet) empty() bool       { return !s.any && len(s.twins) == 0 }

func parseTwinSet(list []string) (twinSet, error) {
	s := twinSet{twins: make(map[uint32]bool)}
	for _, v := range list {
		if v == "*" {
			s.any = true
			continue
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return s, fmt.Errorf("bad twin %q: want a twin id or \"*\"", v)
		}
		s.twins[uint32(n)] = true
	}
	return s, nil
}

// ParsePolicy reads a policy from YAML.
func ParsePolicy(b []byte) (*Policy, error) {
	var pol Policy
	if err := yaml.Unmarshal(b, &pol); err != nil {
		return nil, fmt.Errorf("peer: policy: %w", err)
	}
	switch pol.Default {
	case "", "allow":
		pol.defaultAllow = true
	case "deny":
	default:
		return nil, fmt.Errorf("peer: policy: default must be allow or deny, not %q", pol.Default)
	}
	for i := range pol.Rules {
		r := &pol.Rules[i]
		if len(r.Commands) == 0 {
			return nil, fmt.Errorf("peer: policy: rule %d has no commands", i+1)
		}
		for _, c := range r.Commands {
			if err := checkGlob(c); err != nil {
				return nil, fmt.Errorf("peer: policy: rule %d: bad pattern: %w", i+1, err)
			}
		}
		var err error
		if r.allow, err = parseTwinSet(r.Allow); err != nil {
			return nil, fmt.Errorf("peer: policy: rule %d: %w", i+1, err)
		}
		if r.deny, err = parseTwinSet(r.Deny); err != nil {
			return nil, fmt.Errorf("peer: policy: rule %d: %w", i+1, err)
		}
	}
	if err := pol.parseTopicRules(); err != nil {
		return nil, err
	}
	return &pol, nil
}

// LoadPolicy reads a policy file.
func LoadPolicy(file string) (*Policy, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("peer: policy: %w", err)
	}
	return ParsePolicy(b)
}

// Allow reports whether twin may call cmd. A nil policy allows all.
func (pol *Policy) Allow(twin uint32, cmd string) bool {
	if pol == nil {
		return true
	}
	for i := range pol.Rules {
		r := &pol.Rules[i]
		if !r.matches(cmd) {
			continue
		}
		switch {
		case r.deny.has(twin):
			return false
		case r.allow.has(twin):
			return true
		}
		return r.allow.empty()
	}
	return pol.defaultAllow
}

func (r *PolicyRule) matches(cmd string) bool {
	for _, c := range r.Commands {
		if matchGlob(c, cmd) {
			return true
		}
	}
	return false
}
