package wsframe

import "testing"

// BenchmarkConn reads and writes 256-byte messages (the relay's typical
// envelope) through a Conn over an in-memory stream: the whole per-message
// cost of the codec, without the network.
func BenchmarkConn(b *testing.B) {
	msg := make([]byte, 256)
	b.Run("read-server", func(b *testing.B) {
		c := newConn(new(streamConn).setReader(&loopReader{b: clientFrames(msg, msg, msg, msg)}), false, nil, nil)
		buf := make([]byte, 0, 512)
		b.SetBytes(256)
		for b.Loop() {
			if _, _, err := c.ReadMessage(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, side := range []struct {
		name   string
		client bool
	}{{"write-server", false}, {"write-client", true}} {
		b.Run(side.name, func(b *testing.B) {
			sc := &streamConn{}
			c := newConn(sc, side.client, nil, nil)
			b.SetBytes(256)
			i := 0
			for b.Loop() {
				c.WriteMessage(OpBinary, msg)
				if i++; i%16 == 0 {
					c.Flush()
					sc.w.Reset()
				}
			}
		})
	}
}
