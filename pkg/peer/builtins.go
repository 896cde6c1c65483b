package peer

import (
	"context"
	"encoding/json"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/rmb-go/rmb/pkg/envelope"
)

// Built-in commands (busrt's .broker RPC).
//
// Every peer answers these itself, before in-process handlers and Redis
// services, so no service sees them:
//
//	rmb.version  the peer's version string (JSON string)
//	rmb.test     {"ok":true}: the peer is up and the path to it works
//	rmb.echo     the request's payload and schema, unchanged (benchmarks);
//	             an answer over the envelope size limit becomes a 500 error
//	rmb.info     implementation, version, uptime, twin, relays and their state
//	rmb.stats    the peer's counters (its Prometheus metrics, flattened)
//
// The policy applies to all of them first, as to any command. rmb.info
// and rmb.stats tell a caller about the peer's relays and traffic, so
// they are refused (403) to every twin but the peer's own unless a policy
// rule names the command and allows the caller explicitly (a rule
// matching by a glob such as "rmb.*" with allow: ["*"] counts); the
// policy's default does not open them.

// Built-in command names.
const (
	BuiltinVersion = "rmb.version"
	BuiltinTest    = "rmb.test"
	BuiltinEcho    = "rmb.echo"
	BuiltinInfo    = "rmb.info"
	BuiltinStats   = "rmb.stats"
)

// Implementation is what rmb.info reports as the implementation.
const Implementation = "rmb-go"

// Info is the answer of rmb.info.
type Info struct {
	Implementation string      `json:"implementation"`
	Version        string      `json:"version"`
	Twin           uint32      `json:"twin"`
	UptimeSeconds  int64       `json:"uptime_seconds"`
	Started        time.Time   `json:"started"`
	Relays         []RelayInfo `json:"relays"`
	Redis          bool        `json:"redis"`
}

// RelayInfo is one relay of Info.
type RelayInfo struct {
	URL       string `json:"url"`
	Domain    string `json:"domain"`
	Connected bool   `json:"connected"`
}

// Info returns what rmb.info answers.
func (p *Peer) Info() Info {
	in := Info{
		Implementation: Implementation,
		Version:        p.opts.Version,
		Twin:           p.Twin(),
		Started:        p.svc.started.UTC().Truncate(time.Second),
		UptimeSeconds:  int64(time.Since(p.svc.started) / time.Second),
		Redis:          p.rdb != nil,
	}
	for _, r := range p.relays {
		in.Relays = append(in.Relays, RelayInfo{URL: r.url, Domain: r.domain, Connected: r.current() != nil})
	}
	return in
}

// Stats returns what rmb.stats answers: every counter and gauge of the
// peer's registry by name, with its labels in braces as Prometheus
// writes them (rmb_peer_dropped_total{reason="expired"}); a histogram
// gives its _count and _sum. The label values are bounded sets (reasons,
// codes, relays, lists), so the answer is too.
func (p *Peer) Stats() map[string]float64 {
	out := make(map[string]float64)
	mfs, err := p.metrics.reg.Gather()
	if err != nil {
		p.log.Warn("gather metrics for rmb.stats", "err", err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName() + labelString(m.GetLabel())
			switch {
			case m.Counter != nil:
				out[name] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[name] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[mf.GetName()+"_count"+labelString(m.GetLabel())] = float64(m.GetHistogram().GetSampleCount())
				out[mf.GetName()+"_sum"+labelString(m.GetLabel())] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

func labelString(ls []*dto.LabelPair) string {
	if len(ls) == 0 {
		return ""
	}
	parts := make([]string, 0, len(ls))
	for _, l := range ls {
		v, _ := json.Marshal(l.GetValue())
		parts = append(parts, l.GetName()+"="+string(v))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

// IsBuiltin reports whether cmd is answered by the peer itself.
func IsBuiltin(cmd string) bool {
	switch cmd {
	case BuiltinVersion, BuiltinTest, BuiltinEcho, BuiltinInfo, BuiltinStats:
		return true
	}
	return false
}

// allowExplicit reports whether a rule of pol names cmd and accepts
// twin: the policy's default does not count.
func (pol *Policy) allowExplicit(twin uint32, cmd string) bool {
	if pol == nil {
		return false
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
		return false
	}
	return false
}

// dropBuiltinDenied counts rmb.info and rmb.stats refused to a twin the
// policy does not name.
const dropBuiltinDenied = "builtin_denied"

// builtin answers cmd when it is a built-in and reports whether it was.
// The policy has already allowed src to call cmd.
func (p *Peer) builtin(ctx context.Context, uid string, src address, cmd string, payload []byte, schema string,
	deadline time.Time, later func(func())) bool {
	if !IsBuiltin(cmd) {
		return false
	}
	var data []byte
	outSchema := "application/json"
	switch cmd {
	case BuiltinVersion:
		data, _ = json.Marshal(p.opts.Version)
	case BuiltinTest:
		data = []byte(`{"ok":true}`)
	case BuiltinEcho:
		data, outSchema = payload, schema
	case BuiltinInfo, BuiltinStats:
		if src.twin != p.Twin() && !p.policy.Load().allowExplicit(src.twin, cmd) {
			p.metrics.dropped.WithLabelValues(dropBuiltinDenied).Inc()
			later(func() {
				p.sendError(ctx, uid, src, envelope.CodeDenied,
					"twin "+src.String()+" may not call "+cmd+": the peer's policy does not allow it", deadline)
			})
			return true
		}
		if cmd == BuiltinInfo {
			data, _ = json.Marshal(p.Info())
		} else {
			data, _ = json.Marshal(p.Stats())
		}
	}
	p.svc.builtins.WithLabelValues(cmd).Inc()
	later(func() { p.sendAnswer(ctx, uid, src, data, outSchema, nil, deadline) })
	return true
}

// svcState is what the built-ins, acknowledged delivery (ack.go) and the
// HTTP API (httpapi.go) keep on the peer.
type svcState struct {
	started  time.Time
	builtins *prometheus.CounterVec // by command
	ack      ackState
}

func newSvcState(p *Peer) *svcState {
	s := &svcState{
		started: time.Now(),
		builtins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rmb_peer_builtin_requests_total", Help: "Requests answered by a built-in command (rmb.version, rmb.test, rmb.echo, rmb.info, rmb.stats), by command.",
		}, []string{"command"}),
	}
	p.metrics.reg.MustRegister(s.builtins)
	s.ack.init(p)
	return s
}
