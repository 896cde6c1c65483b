package peer

import "fmt"

// TopicRule is one rule of a policy's topics section: who may subscribe
// to this twin's topics.
//
//	topics:
//	  - topics: ["alerts/#"]  # MQTT patterns (+ and #)
//	    allow: [41, 55]      # twin ids, or "*"
//	  - topics: ["private/#"]
//	    deny: ["*"]
//
// A subscription's pattern is checked against the rules in order: the
// first rule with a pattern that overlaps it (some topic matches both)
// decides, as command rules do (deny wins, then allow; a rule with an
// allow list refuses everyone else). No matching rule allows. The same
// rules are applied again to each published topic name, so a twin that
// subscribed to "#" never gets an event on a topic a rule denies it.
//
// The built-in commands (rmb.sub.subscribe, rmb.sub.renew) also pass the
// command rules: a policy with "default: deny" must allow them.
type TopicRule struct {
	Topics []string `yaml:"topics"`
	Allow  []string `yaml:"allow"`
	Deny   []string `yaml:"deny"`

	allow, deny twinSet
}

// parseTopicRules checks the topics section of a policy.
func (pol *Policy) parseTopicRules() error {
	for i := range pol.Topics {
		r := &pol.Topics[i]
		if len(r.Topics) == 0 {
			return fmt.Errorf("peer: policy: topics rule %d has no topics", i+1)
		}
		for _, t := range r.Topics {
			if err := CheckTopicPattern(t); err != nil {
				return fmt.Errorf("peer: policy: topics rule %d: %w", i+1, err)
			}
		}
		var err error
		if r.allow, err = parseTwinSet(r.Allow); err != nil {
			return fmt.Errorf("peer: policy: topics rule %d: %w", i+1, err)
		}
		if r.deny, err = parseTwinSet(r.Deny); err != nil {
			return fmt.Errorf("peer: policy: topics rule %d: %w", i+1, err)
		}
	}
	return nil
}

// AllowSubscribe reports whether twin may subscribe to pattern (or
// receive an event on the topic name pattern). A nil policy allows all.
func (pol *Policy) AllowSubscribe(twin uint32, pattern string) bool {
	if pol == nil {
		return true
	}
	for i := range pol.Topics {
		r := &pol.Topics[i]
		hit := false
		for _, t := range r.Topics {
			if topicsOverlap(t, pattern) {
				hit = true
				break
			}
		}
		if !hit {
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
	return true
}
