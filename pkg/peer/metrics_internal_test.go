package peer

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Error codes chosen by remote twins cannot grow the metric's series
// without bound: everything outside 100-599 is one series.
func TestErrorCodeLabelsBounded(t *testing.T) {
	m := newMetrics(func() float64 { return 0 })
	for code := range uint32(5000) {
		m.errorCode(code * 7919)
	}
	m.errorCode(404)
	if n := testutil.CollectAndCount(m.errors); n > 501 {
		t.Errorf("%d series of rmb_peer_errors_total, want at most 501", n)
	}
	if got := testutil.ToFloat64(m.errors.WithLabelValues("other")); got == 0 {
		t.Error("codes outside 100-599 not counted as other")
	}
	if errorLabel(404) != "404" || errorLabel(4_000_000) != "other" || errorLabel(0) != "other" {
		t.Error("errorLabel")
	}
}
