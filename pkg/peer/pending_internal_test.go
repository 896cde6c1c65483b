package peer

import (
	"encoding/json"
	"testing"
)

// The hand-written encoding of a pending record is encoding/json's, for
// plain and unusual strings and nil, empty and full envelopes alike.
func FuzzPendingRecordJSON(f *testing.F) {
	f.Add("msgbus.reply.5f1c2a7e", "ref-1", int64(1700000000123), int64(1700000000001), []byte("\x0a\x03uid\x12\x01x"))
	f.Add("", "", int64(0), int64(-1), []byte(nil))
	f.Add("q", "r", int64(5), int64(6), []byte{})
	f.Add("a\"b", "<&>", int64(1), int64(2), []byte{0xff})
	f.Add("é", "\x7f\x00", int64(-9), int64(9), []byte("ab"))
	f.Fuzz(func(t *testing.T, ret, ref string, deadline, sent int64, env []byte) {
		r := pendingRecord{Ret: ret, Ref: ref, Deadline: deadline, Sent: sent, Envelope: env}
		want, err := json.Marshal(&r)
		if err != nil {
			t.Skip()
		}
		if got := r.appendJSON([]byte("x")); string(got) != "x"+string(want) {
			t.Fatalf("appendJSON = %s\nwant        x%s", got, want)
		}
	})
}
