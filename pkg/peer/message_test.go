package peer

import (
	"encoding/json"
	"testing"
)

// The decoders and their tests (and FuzzDecodeOutgoingRequest) are in
// package redisapi, whose types the peer uses.

func TestIncomingJSONFieldNames(t *testing.T) {
	tag := "t"
	b, _ := json.Marshal(&IncomingRequest{Version: 1, Ref: "u", Source: "41", Command: "c", Expiration: 300, Data: "", Tags: &tag, ReplyTo: ReplyQueue, Schema: "s", Now: 5})
	want := `{"ver":1,"ref":"u","src":"41","cmd":"c","exp":300,"dat":"","tag":"t","ret":"msgbus.system.reply","shm":"s","now":5}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	b, _ = json.Marshal(&IncomingResponse{Version: 1, Ref: "r", Data: "Mw==", Source: "55", Now: 1})
	want = `{"ver":1,"ref":"r","dat":"Mw==","src":"55","shm":"","now":1,"err":null}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
}

// A dead letter keeps its JSON field names.
func TestDeadLetterJSON(t *testing.T) {
	b, _ := json.Marshal(&DeadLetter{Queue: "q", Message: "m", Reason: "r", Dst: 4, Code: 101, Ref: "f", Ret: "t", UID: "u", Details: "d"})
	want := `{"queue":"q","message":"m","reason":"r","dst":4,"time":"0001-01-01T00:00:00Z","code":101,"ref":"f","ret":"t","uid":"u","details":"d"}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
}
