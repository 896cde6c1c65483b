// Package envelope is the RMB wire format: the protobuf Envelope (generated
// from proto/types.proto into types.pb.go), its stamping and TTL rules, the
// MD5 challenge that signatures cover, and a cheap reader of the routing
// fields for relays.
//
// The life of an envelope:
//
//	e := envelope.NewRequest(uid, "calc.add", payload, 300)  // sender builds
//	e.Source, e.Destination = ...
//	e.Stamp(time.Now())                                      // right before signing
//	e.Sign(id)                                               // 65-byte prefixed signature over Challenge(e)
//	b, _ := envelope.Marshal(e)                              // one WebSocket binary message
//
//	var r envelope.Routing                                   // relay: no full decode,
//	envelope.ReadRouting(b, &r)                              // no allocation
//
//	e, _ = envelope.Unmarshal(b, envelope.DefaultMaxSize)    // receiver
//	e.Verify(senderPublicKey)
//
// Field numbers, the byte order of the serialization (oneofs last) and the
// challenge layout are byte-compatible with rmb-rs and rmb-sdk-go; the tests
// check that against the vectors in testdata/.
package envelope
