package registrar

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
)

var _ Store = (*MemStore)(nil)

// MemStore is a Store held in memory, for tests and embedding. Its zero
// value is not usable; call NewMemStore.
type MemStore struct {
	mu       sync.Mutex // guards the following
	accounts map[uint32]*Account
	byKey    map[string]uint32
	lastID   uint32
	seq      uint64
	log      []Change // ascending Seq; entries older than their twin's Seq are stale
	closed   bool
}

// NewMemStore returns an empty in-memory store.
func NewMemStore() *MemStore {
	return &MemStore{
		accounts: make(map[uint32]*Account),
		byKey:    make(map[string]uint32),
	}
}

// check reports why the store cannot serve a call right now.
func (m *MemStore) check(ctx context.Context) error {
	if m.closed {
		return ErrClosed
	}
	return ctx.Err()
}

// Create implements Store.
func (m *MemStore) Create(ctx context.Context, t Twin) (*Account, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return nil, err
	}
	if id, ok := m.byKey[string(t.PublicKey)]; ok {
		return nil, fmt.Errorf("%w by twin %d", ErrExists, id)
	}
	id, ok := nextTwinID(uint64(m.lastID) + 1)
	if !ok {
		return nil, errors.New("registrar: twin ids exhausted")
	}
	now := stamp()
	a := &Account{Twin: t.clone(), CreatedAt: now, UpdatedAt: now}
	a.ID = id
	m.lastID = id
	m.byKey[string(a.PublicKey)] = id
	m.accounts[id] = a
	m.record(a)
	return a.clone(), nil
}

// record gives a the next sequence number and logs the change.
func (m *MemStore) record(a *Account) {
	m.seq++
	a.Seq = m.seq
	m.log = append(m.log, Change{Seq: a.Seq, TwinID: a.ID})
	if len(m.log) > 2*len(m.accounts)+64 {
		// Drop superseded entries so the log stays within twice the number
		// of accounts.
		live := m.log[:0]
		for _, c := range m.log {
			if m.accounts[c.TwinID].Seq == c.Seq {
				live = append(live, c)
			}
		}
		clear(m.log[len(live):])
		m.log = live
	}
}

// account returns the stored account of a twin; m.mu must be held.
func (m *MemStore) account(ctx context.Context, id uint32) (*Account, error) {
	if err := m.check(ctx); err != nil {
		return nil, err
	}
	a, ok := m.accounts[id]
	if !ok {
		return nil, fmt.Errorf("%w: twin %d", ErrNotFound, id)
	}
	return a, nil
}

// Get implements Store.
func (m *MemStore) Get(ctx context.Context, id uint32) (*Account, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, err := m.account(ctx, id)
	if err != nil {
		return nil, err
	}
	return a.clone(), nil
}

// GetByPublicKey implements Store.
func (m *MemStore) GetByPublicKey(ctx context.Context, pub []byte) (*Account, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return nil, err
	}
	id, ok := m.byKey[string(pub)]
	if !ok {
		return nil, fmt.Errorf("%w: no twin has this public key", ErrNotFound)
	}
	return m.accounts[id].clone(), nil
}

// Update implements Store.
func (m *MemStore) Update(ctx context.Context, id uint32, u AccountUpdate) (*Account, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, err := m.account(ctx, id)
	if err != nil {
		return nil, err
	}
	if u.apply(a, stamp()) {
		m.record(a)
	}
	return a.clone(), nil
}

// Changes implements Store.
func (m *MemStore) Changes(ctx context.Context, since uint64, limit int) ([]Change, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return nil, 0, err
	}
	var out []Change
	if since < math.MaxUint64 {
		i := sort.Search(len(m.log), func(i int) bool { return m.log[i].Seq > since })
		for _, c := range m.log[i:] {
			if len(out) >= limit {
				break
			}
			if m.accounts[c.TwinID].Seq == c.Seq {
				out = append(out, c)
			}
		}
	}
	return out, m.seq, nil
}

// Close implements Store.
func (m *MemStore) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}
