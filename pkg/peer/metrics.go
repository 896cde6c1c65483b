package peer

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the peer's Prometheus collectors, registered on its own
// registry (Peer.Registry).
type metrics struct {
	reg *prometheus.Registry

	requestsOut  prometheus.Counter
	requestsIn   prometheus.Counter
	responsesOut prometheus.Counter
	responsesIn  prometheus.Counter
	errors       *prometheus.CounterVec // by code
	dropped      *prometheus.CounterVec // by reason
	deadLettered *prometheus.CounterVec // by queue
	duplicates   prometheus.Counter
	resent       *prometheus.CounterVec // by reason (resend.go)
	recovered    *prometheus.CounterVec // by processing list
	relayUp      *prometheus.GaugeVec   // by relay
	relayDials   *prometheus.CounterVec
	roundTrip    prometheus.Histogram
	pending      prometheus.GaugeFunc
}

func newMetrics(pendingCount func() float64) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requestsOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rmb_peer_requests_sent_total", Help: "Request envelopes sent to a relay.",
		}),
		requestsIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rmb_peer_requests_received_total", Help: "Verified request envelopes received.",
		}),
		responsesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rmb_peer_responses_sent_total", Help: "Response and error envelopes sent to a relay.",
		}),
		responsesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rmb_peer_responses_received_total", Help: "Responses delivered to a caller.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rmb_peer_errors_total", Help: "Errors reported to callers or senders, by code.",
		}, []string{"code"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rmb_peer_dropped_total", Help: "Messages dropped, by reason.",
		}, []string{"reason"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rmb_peer_dead_lettered_total", Help: "Messages moved to the dead-letter list, by source queue.",
		}, []string{"queue"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rmb_peer_duplicates_total", Help: "Incoming envelopes suppressed as duplicates.",
		}),
		resent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rmb_peer_resent_total",
			Help: "Unanswered requests sent again, by reason: unanswered (a share of the TTL passed), connection_lost, restart.",
		}, []string{"reason"}),
		recovered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rmb_peer_recovered_total",
			Help: "Messages found in a processing list with no worker holding them (left by an earlier run, or a lost Redis reply), by list.",
		}, []string{"list"}),
		relayUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rmb_peer_relay_connected", Help: "1 when the connection to the relay is up.",
		}, []string{"relay"}),
		relayDials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rmb_peer_relay_dials_total", Help: "Connection attempts to a relay, by result.",
		}, []string{"relay", "result"}),
		roundTrip: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "rmb_peer_round_trip_seconds",
			Help:    "Time from sending a request to receiving its response.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
	m.pending = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "rmb_peer_pending_requests", Help: "Requests waiting for responses.",
	}, pendingCount)
	m.reg.MustRegister(m.requestsOut, m.requestsIn, m.responsesOut, m.responsesIn,
		m.errors, m.dropped, m.deadLettered, m.duplicates, m.resent, m.recovered, m.relayUp,
		m.relayDials, m.roundTrip, m.pending)
	return m
}

// errorCode counts an error by its code. Codes come from remote twins and
// local services, so the label is bounded: 100 to 599 (the protocol's
// codes and HTTP-like ones) stand for themselves, anything else is "other".
func (m *metrics) errorCode(code uint32) {
	m.errors.WithLabelValues(errorLabel(code)).Inc()
}

func errorLabel(code uint32) string {
	if code < 100 || code > 599 {
		return "other"
	}
	return strconv.FormatUint(uint64(code), 10)
}

// Reasons for dropped messages.
const (
	dropUnknownUID   = "unknown_uid"
	dropMalformed    = "malformed"
	dropExpired      = "expired"
	dropBadSignature = "bad_signature"
	dropUnknownTwin  = "unknown_twin"
	dropDecrypt      = "decrypt"
	dropUnexpected   = "unexpected_kind"
	dropLateResponse = "late_response"
	dropDeadLetter   = "dead_letter_full"
	// dropResendRefused: a relay refused a re-sent copy for its rate
	// limit; the first copy stands.
	dropResendRefused = "resend_refused"
)
