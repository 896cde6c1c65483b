package registrar

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

var _ Store = (*BoltStore)(nil)

// BoltStore is a Store in a single bbolt file. Accounts, the last twin id
// and the change sequence number survive restarts. Only one process may
// open the file at a time.
//
// Layout, all integers big-endian:
//
//	accounts: twin id (4 B) -> boltRecord as JSON; bucket sequence = last twin id
//	keys:     public key (32 B) -> twin id (4 B)
//	changes:  seq (8 B) -> twin id (4 B), one entry per twin (its latest
//	          change); bucket sequence = latest seq
type BoltStore struct {
	db *bolt.DB
}

var (
	bucketAccounts = []byte("accounts")
	bucketKeys     = []byte("keys")
	bucketChanges  = []byte("changes")
)

// boltRecord is an account on disk; the twin id is the key.
type boltRecord struct {
	PublicKey []byte    `json:"public_key"`
	Relays    []string  `json:"relays"`
	E2EKey    []byte    `json:"e2e_key,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	Seq       uint64    `json:"seq"`
}

// OpenBolt opens or creates the store file at path. It gives up after a
// second if another process holds the file.
func OpenBolt(path string) (*BoltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("registrar: %s is in use by another process (another rmb-registrar?): stop it, or give each registrar its own --db (several registrars share a postgres:// database): %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("registrar: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketAccounts, bucketKeys, bucketChanges} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("registrar: initialize %s: %w", path, err)
	}
	return &BoltStore{db: db}, nil
}

// view and update run fn in a transaction unless ctx is already done, and
// turn bbolt's "database not open" into ErrClosed.
func (s *BoltStore) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return closedErr(s.db.View(fn))
}

func (s *BoltStore) update(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return closedErr(s.db.Update(fn))
}

func closedErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// Create implements Store.
func (s *BoltStore) Create(ctx context.Context, t Twin) (*Account, error) {
	now := stamp()
	a := &Account{Twin: t.clone(), CreatedAt: now, UpdatedAt: now}
	err := s.update(ctx, func(tx *bolt.Tx) error {
		keys := tx.Bucket(bucketKeys)
		if v := keys.Get(a.PublicKey); v != nil {
			return fmt.Errorf("%w by twin %d", ErrExists, binary.BigEndian.Uint32(v))
		}
		accounts := tx.Bucket(bucketAccounts)
		n, err := accounts.NextSequence()
		if err != nil {
			return err
		}
		id, ok := nextTwinID(n)
		if !ok {
			return errors.New("registrar: twin ids exhausted")
		}
		a.ID = id
		if err := keys.Put(a.PublicKey, be32(id)); err != nil {
			return err
		}
		return putAccount(tx, a, 0)
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// putAccount writes a under the next change sequence number, replacing its
// change entry at prevSeq (0 for a new account).
func putAccount(tx *bolt.Tx, a *Account, prevSeq uint64) error {
	changes := tx.Bucket(bucketChanges)
	seq, err := changes.NextSequence()
	if err != nil {
		return err
	}
	a.Seq = seq
	if prevSeq != 0 {
		if err := changes.Delete(be64(prevSeq)); err != nil {
			return err
		}
	}
	if err := changes.Put(be64(seq), be32(a.ID)); err != nil {
		return err
	}
	rec, err := json.Marshal(boltRecord{
		PublicKey: a.PublicKey,
		Relays:    a.Relays,
		E2EKey:    a.E2EKey,
		CreatedAt: a.CreatedAt,
		UpdatedAt: a.UpdatedAt,
		Seq:       a.Seq,
	})
	if err != nil {
		return err
	}
	return tx.Bucket(bucketAccounts).Put(be32(a.ID), rec)
}

// getAccount reads a twin's account inside tx.
func getAccount(tx *bolt.Tx, id uint32) (*Account, error) {
	v := tx.Bucket(bucketAccounts).Get(be32(id))
	if v == nil {
		return nil, fmt.Errorf("%w: twin %d", ErrNotFound, id)
	}
	var r boltRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("registrar: corrupt record of twin %d: %w", id, err)
	}
	return &Account{
		Twin:      Twin{ID: id, PublicKey: r.PublicKey, Relays: r.Relays, E2EKey: r.E2EKey},
		CreatedAt: r.CreatedAt,
		UpdatedAt: r.UpdatedAt,
		Seq:       r.Seq,
	}, nil
}

// Get implements Store.
func (s *BoltStore) Get(ctx context.Context, id uint32) (*Account, error) {
	var a *Account
	err := s.view(ctx, func(tx *bolt.Tx) (err error) {
		a, err = getAccount(tx, id)
		return err
	})
	return a, err
}

// GetByPublicKey implements Store.
func (s *BoltStore) GetByPublicKey(ctx context.Context, pub []byte) (*Account, error) {
	var a *Account
	err := s.view(ctx, func(tx *bolt.Tx) (err error) {
		v := tx.Bucket(bucketKeys).Get(pub)
		if v == nil {
			return fmt.Errorf("%w: no twin has this public key", ErrNotFound)
		}
		a, err = getAccount(tx, binary.BigEndian.Uint32(v))
		return err
	})
	return a, err
}

// Update implements Store.
func (s *BoltStore) Update(ctx context.Context, id uint32, u AccountUpdate) (*Account, error) {
	var a *Account
	err := s.update(ctx, func(tx *bolt.Tx) (err error) {
		if a, err = getAccount(tx, id); err != nil {
			return err
		}
		if !u.apply(a, stamp()) {
			return nil
		}
		return putAccount(tx, a, a.Seq)
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// Changes implements Store.
func (s *BoltStore) Changes(ctx context.Context, since uint64, limit int) ([]Change, uint64, error) {
	var (
		out    []Change
		latest uint64
	)
	err := s.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketChanges)
		latest = b.Sequence()
		if since == math.MaxUint64 {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(be64(since + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			out = append(out, Change{Seq: binary.BigEndian.Uint64(k), TwinID: binary.BigEndian.Uint32(v)})
		}
		return nil
	})
	return out, latest, err
}

// Close implements Store.
func (s *BoltStore) Close() error {
	return s.db.Close()
}

func be32(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
func be64(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
