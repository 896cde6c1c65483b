package registrar

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"slices"
	"testing"
)

// stores are the Store implementations; each test runs against all.
var stores = []struct {
	name string
	open func(t *testing.T) Store
}{
	{"mem", func(t *testing.T) Store { return NewMemStore() }},
	{"bolt", func(t *testing.T) Store {
		s, err := OpenBolt(filepath.Join(t.TempDir(), "registrar.db"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}},
	{"postgres", func(t *testing.T) Store { return openPostgres(t, nil) }},
}

func testTwin(n byte) Twin {
	pub := make([]byte, 32)
	pub[0] = n
	return Twin{PublicKey: pub, Relays: []string{"r1.example"}, E2EKey: make([]byte, 33)}
}

func TestStore(t *testing.T) {
	ctx := context.Background()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			s := st.open(t)
			defer s.Close()

			for i := byte(1); i <= 3; i++ {
				in := testTwin(i)
				in.ID = 77 // ignored
				a, err := s.Create(ctx, in)
				if err != nil {
					t.Fatal(err)
				}
				if a.ID != uint32(i) || a.Seq != uint64(i) || a.CreatedAt.IsZero() || !a.CreatedAt.Equal(a.UpdatedAt) {
					t.Errorf("created %+v, want twin %d seq %d", a, i, i)
				}
				in.Relays[0] = "changed.example" // the store keeps its own copy
			}
			if _, err := s.Create(ctx, testTwin(2)); !errors.Is(err, ErrExists) {
				t.Errorf("duplicate key: %v, want ErrExists", err)
			}

			a, err := s.Get(ctx, 2)
			if err != nil || a.ID != 2 || a.PublicKey[0] != 2 || !slices.Equal(a.Relays, []string{"r1.example"}) || len(a.E2EKey) != 33 {
				t.Fatalf("Get(2) = %+v, %v", a, err)
			}
			a.Relays[0] = "mutated.example" // nor does it share what it hands out
			if a, _ := s.Get(ctx, 2); a.Relays[0] != "r1.example" {
				t.Errorf("store shares its slices: %q", a.Relays)
			}
			if a, err := s.GetByPublicKey(ctx, testTwin(3).PublicKey); err != nil || a.ID != 3 {
				t.Errorf("GetByPublicKey = %+v, %v", a, err)
			}
			if _, err := s.Get(ctx, 4); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get(4): %v, want ErrNotFound", err)
			}
			if _, err := s.GetByPublicKey(ctx, testTwin(9).PublicKey); !errors.Is(err, ErrNotFound) {
				t.Errorf("GetByPublicKey(unknown): %v, want ErrNotFound", err)
			}
			if _, err := s.Update(ctx, 4, AccountUpdate{Relays: []string{}}); !errors.Is(err, ErrNotFound) {
				t.Errorf("Update(4): %v, want ErrNotFound", err)
			}

			// Updates: a real change takes the next seq, a no-op does not,
			// nil fields stay, empty ones clear.
			a, err = s.Update(ctx, 1, AccountUpdate{Relays: []string{"r2.example"}})
			if err != nil || a.Seq != 4 || !slices.Equal(a.Relays, []string{"r2.example"}) || len(a.E2EKey) != 33 {
				t.Fatalf("Update(1) = %+v, %v", a, err)
			}
			a, err = s.Update(ctx, 1, AccountUpdate{Relays: []string{"r2.example"}, E2EKey: make([]byte, 33)})
			if err != nil || a.Seq != 4 {
				t.Errorf("no-op update = %+v, %v; want seq unchanged", a, err)
			}
			a, err = s.Update(ctx, 2, AccountUpdate{E2EKey: []byte{}})
			if err != nil || a.Seq != 5 || a.E2EKey != nil || !slices.Equal(a.Relays, []string{"r1.example"}) {
				t.Errorf("clearing the e2e key = %+v, %v", a, err)
			}
			if a, _ := s.Get(ctx, 2); a.E2EKey != nil || a.Seq != 5 {
				t.Errorf("stored after clearing: %+v", a)
			}

			tests := []struct {
				since  uint64
				limit  int
				want   []Change
				latest uint64
			}{
				{0, 100, []Change{{3, 3}, {4, 1}, {5, 2}}, 5},
				{3, 100, []Change{{4, 1}, {5, 2}}, 5},
				{0, 2, []Change{{3, 3}, {4, 1}}, 5},
				{5, 100, nil, 5},
				{99, 100, nil, 5},
				{math.MaxUint64, 100, nil, 5},
			}
			for _, tt := range tests {
				got, latest, err := s.Changes(ctx, tt.since, tt.limit)
				if err != nil || latest != tt.latest || !slices.Equal(got, tt.want) {
					t.Errorf("Changes(%d, %d) = %v, %d, %v; want %v, %d", tt.since, tt.limit, got, latest, err, tt.want, tt.latest)
				}
			}

			cancelled, cancel := context.WithCancel(ctx)
			cancel()
			if _, err := s.Get(cancelled, 1); !errors.Is(err, context.Canceled) {
				t.Errorf("Get with a cancelled context: %v", err)
			}

			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Get(ctx, 1); !errors.Is(err, ErrClosed) {
				t.Errorf("Get after Close: %v, want ErrClosed", err)
			}
		})
	}
}

// TestMemStoreLogCompaction checks that repeated updates of few twins keep
// the change log bounded and the feed exact.
func TestMemStoreLogCompaction(t *testing.T) {
	ctx := context.Background()
	s := NewMemStore()
	for i := byte(1); i <= 3; i++ {
		if _, err := s.Create(ctx, testTwin(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 1000 {
		relay := []string{"r" + string(rune('a'+i%26)) + ".example"}
		if _, err := s.Update(ctx, uint32(i%3+1), AccountUpdate{Relays: relay}); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(s.log); n > 2*3+64+1 {
		t.Errorf("log holds %d entries for 3 twins", n)
	}
	got, latest, err := s.Changes(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Change{{1001, 2}, {1002, 3}, {1003, 1}}; latest != 1003 || !slices.Equal(got, want) {
		t.Errorf("Changes = %v, %d; want %v, 1003", got, latest, want)
	}
}

// TestBoltStoreReopen checks what survives a restart at the store level.
func TestBoltStoreReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registrar.db")
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := byte(1); i <= 2; i++ {
		if _, err := s.Create(ctx, testTwin(i)); err != nil {
			t.Fatal(err)
		}
	}
	before, err := s.Update(ctx, 1, AccountUpdate{Relays: []string{"r2.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBolt(path); err == nil {
		t.Error("a second OpenBolt of an open file succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := s.Get(ctx, 1)
	if err != nil || a.Seq != 3 || !slices.Equal(a.Relays, []string{"r2.example"}) || !a.UpdatedAt.Equal(before.UpdatedAt) || !a.CreatedAt.Equal(before.CreatedAt) {
		t.Errorf("after reopen: %+v, %v; before %+v", a, err, before)
	}
	if _, err := s.Create(ctx, testTwin(1)); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate after reopen: %v", err)
	}
	if a, err := s.Create(ctx, testTwin(3)); err != nil || a.ID != 3 || a.Seq != 4 {
		t.Errorf("create after reopen: %+v, %v; want twin 3 seq 4", a, err)
	}
}
