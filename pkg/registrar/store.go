package registrar

import (
	"context"
	"errors"
	"math"
)

// ErrClosed is returned by a store used after Close.
var ErrClosed = errors.New("registrar: store closed")

// ErrUnavailable wraps the errors of a store that cannot reach its database
// right now (a PostgreSQL server restarting, a network failure). The server
// answers 503; the call may work when retried later.
var ErrUnavailable = errors.New("registrar: account store unavailable")

// Store keeps the accounts of a registrar. Implementations are safe for
// concurrent use, hand out copies (callers may keep and modify what they
// get), stamp CreatedAt and UpdatedAt themselves, and return errors wrapping
// ErrNotFound and ErrExists where documented.
type Store interface {
	// Create stores a new account for t, assigning the next twin id
	// (t.ID is ignored) and the next change sequence number. It fails
	// with ErrExists if t.PublicKey is already registered.
	Create(ctx context.Context, t Twin) (*Account, error)

	// Get returns the account of a twin, or ErrNotFound.
	Get(ctx context.Context, id uint32) (*Account, error)

	// GetByPublicKey returns the account holding a signing key, or
	// ErrNotFound.
	GetByPublicKey(ctx context.Context, pub []byte) (*Account, error)

	// Update applies u to a twin's account, or fails with ErrNotFound. An
	// update that changes something takes the next change sequence number;
	// one that changes nothing returns the account as it was.
	Update(ctx context.Context, id uint32, u AccountUpdate) (*Account, error)

	// Changes returns up to limit changes with a sequence number above
	// since, oldest first, each twin once with its latest change, and the
	// latest sequence number of the store. since may be any value,
	// including one above the latest.
	Changes(ctx context.Context, since uint64, limit int) (changes []Change, latest uint64, err error)

	// Close releases the store. Calls after Close fail.
	Close() error
}

// nextTwinID checks that a sequence value still fits a twin id.
func nextTwinID(n uint64) (uint32, bool) {
	return uint32(n), n > 0 && n <= math.MaxUint32
}
