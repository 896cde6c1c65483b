package bench

import (
	"context"

	"github.com/coder/websocket"

	"github.com/rmb-go/rmb/internal/wsframe"
)

// client is one load-generating WebSocket connection.
type client interface {
	// Write sends one binary message; it may stay buffered until Flush.
	Write(ctx context.Context, b []byte) error
	// Flush sends what Write buffered.
	Flush() error
	// Read returns the next message, possibly in buf's storage.
	Read(ctx context.Context, buf []byte) ([]byte, error)
	CloseNow() error
}

func dialClient(ctx context.Context, url string, readLimit int, coder bool) (client, error) {
	if coder {
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			return nil, err
		}
		c.SetReadLimit(int64(readLimit))
		return coderClient{c}, nil
	}
	c, err := wsframe.Dial(ctx, url, &wsframe.Options{ReadLimit: readLimit})
	if err != nil {
		return nil, err
	}
	return frameClient{c}, nil
}

// frameClient coalesces writes until Flush (or 64 KiB) and reads into the
// caller's buffer.
type frameClient struct{ c *wsframe.Conn }

func (f frameClient) Write(_ context.Context, b []byte) error {
	return f.c.WriteMessage(wsframe.OpBinary, b)
}
func (f frameClient) Flush() error { return f.c.Flush() }
func (f frameClient) Read(_ context.Context, buf []byte) ([]byte, error) {
	_, b, err := f.c.ReadMessage(buf)
	return b, err
}
func (f frameClient) CloseNow() error { return f.c.CloseNow() }

// coderClient writes (and flushes) every message and allocates per read, as
// coder/websocket does.
type coderClient struct{ c *websocket.Conn }

func (c coderClient) Write(ctx context.Context, b []byte) error {
	return c.c.Write(ctx, websocket.MessageBinary, b)
}
func (c coderClient) Flush() error { return nil }
func (c coderClient) Read(ctx context.Context, _ []byte) ([]byte, error) {
	_, b, err := c.c.Read(ctx)
	return b, err
}
func (c coderClient) CloseNow() error { return c.c.CloseNow() }
