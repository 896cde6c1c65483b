package identity_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/vectors"
	"github.com/rmb-go/rmb/pkg/identity"
)

func TestIdentityVectors(t *testing.T) {
	v := vectors.Load(t)
	for _, c := range v.Identities {
		t.Run(c.KeyType+"/"+strings.Fields(c.Mnemonic)[0], func(t *testing.T) {
			seed, err := identity.SeedFromMnemonic(c.Mnemonic)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(seed); got != c.SeedHex {
				t.Fatalf("seed = %s, want %s", got, c.SeedHex)
			}
			kt, err := identity.ParseKeyType(c.KeyType)
			if err != nil {
				t.Fatal(err)
			}
			for _, secret := range []string{c.Mnemonic, "0x" + c.SeedHex} {
				id, err := identity.FromSecret(secret, kt)
				if err != nil {
					t.Fatal(err)
				}
				if got := hex.EncodeToString(id.PublicKey()); got != c.PublicKeyHex {
					t.Errorf("public key from %q = %s, want %s", secret[:6], got, c.PublicKeyHex)
				}
				if got := hex.EncodeToString(id.E2EPublicKey()); got != c.E2EPublicKeyHex {
					t.Errorf("e2e key = %s, want %s", got, c.E2EPublicKeyHex)
				}
			}
		})
	}
}

func TestSr25519VerifyVector(t *testing.T) {
	v := vectors.Load(t)
	s := v.Sr25519Signature
	pub, msg, sig := vectors.Hex(t, s.PublicKeyHex), vectors.Hex(t, s.MessageHex), vectors.Hex(t, s.SignatureHex)
	if err := identity.Verify(pub, msg, sig); err != nil {
		t.Fatalf("reference sr25519 signature rejected: %v", err)
	}
	if err := identity.VerifyRaw(pub, msg, sig[1:]); err != nil {
		t.Fatalf("raw form rejected: %v", err)
	}
	bad := bytes.Clone(msg)
	bad[0] ^= 1
	if err := identity.Verify(pub, bad, sig); !errors.Is(err, identity.ErrBadSignature) {
		t.Fatalf("tampered message: err = %v, want ErrBadSignature", err)
	}
}

func TestSignVerifyBothTypes(t *testing.T) {
	for _, kt := range []identity.KeyType{identity.Ed25519, identity.Sr25519} {
		t.Run(string(kt), func(t *testing.T) {
			m, err := identity.NewMnemonic()
			if err != nil {
				t.Fatal(err)
			}
			if n := len(strings.Fields(m)); n != 12 {
				t.Fatalf("mnemonic has %d words", n)
			}
			id, err := identity.FromSecret(m, kt)
			if err != nil {
				t.Fatal(err)
			}
			other, _ := identity.FromSecret("0x"+strings.Repeat("11", 32), kt)
			msg := []byte("hello")
			sig := id.Sign(msg)
			if len(sig) != identity.SignatureSize {
				t.Fatalf("signature is %d bytes", len(sig))
			}
			if err := identity.Verify(id.PublicKey(), msg, sig); err != nil {
				t.Fatal(err)
			}
			if err := identity.VerifyRaw(id.PublicKey(), msg, id.SignRaw(msg)); err != nil {
				t.Fatal(err)
			}
			cases := map[string][]byte{
				"short":      sig[:64],
				"long":       append(bytes.Clone(sig), 0),
				"type byte":  append([]byte{'x'}, sig[1:]...),
				"wrong type": append([]byte{otherType(sig[0])}, sig[1:]...),
				"flipped":    flip(sig, 10),
			}
			for name, s := range cases {
				if err := identity.Verify(id.PublicKey(), msg, s); !errors.Is(err, identity.ErrBadSignature) {
					t.Errorf("%s: err = %v, want ErrBadSignature", name, err)
				}
			}
			if err := identity.Verify(other.PublicKey(), msg, sig); err == nil {
				t.Error("signature verified against another key")
			}
			if err := identity.Verify([]byte{1, 2, 3}, msg, sig); err == nil {
				t.Error("signature verified against a 3-byte key")
			}
		})
	}
}

func otherType(b byte) byte {
	if b == identity.TypeByteEd25519 {
		return identity.TypeByteSr25519
	}
	return identity.TypeByteEd25519
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x40
	return c
}

// A bad secret is refused with what is wrong with it, never with a word of
// it.
func TestBadSecrets(t *testing.T) {
	for _, c := range []struct{ secret, want string }{
		{"", "it is empty"},
		{"0x1234", "a 0x seed has 64 hex digits, this one 4"},
		{"0x" + strings.Repeat("zz", 32), "a 0x seed is hex digits only"},
		{"bottom drive obey lake curtain smoke basket hold race lonely fit fit", "the checksum does not match"},
		{"not a mnemonic at all", "a mnemonic has 12, 15, 18, 21 or 24 words, this one 5"},
		{"bottom drive obey lake curtain smoke basket hold race lonely fitt walk", "word 11 not in the BIP-39 English word list"},
		{"Bottom drive obey lake curtain smoke basket hold race lonely fit walk", "word 1 not in"},
		{"bottom drive obey lake curtain smoke basket hold race lonely fit walk fit", "this one 13"},
	} {
		_, err := identity.FromSecret(c.secret, identity.Ed25519)
		if !errors.Is(err, identity.ErrBadSecret) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("FromSecret(%q) err = %v, want ErrBadSecret saying %q", c.secret, err, c.want)
			continue
		}
		for _, w := range []string{"fitt", "Bottom", "zz"} {
			if strings.Contains(c.secret, w) && strings.Contains(err.Error(), w) {
				t.Errorf("the error quotes the secret: %v", err)
			}
		}
	}
	if _, err := identity.FromSecret("0x"+strings.Repeat("11", 32), "rsa"); !errors.Is(err, identity.ErrBadKeyType) {
		t.Errorf("bad key type err = %v", err)
	}
	if _, err := identity.ParseKeyType("SR25519"); err != nil {
		t.Errorf("ParseKeyType is not case-insensitive: %v", err)
	}
}

func TestJWTVectors(t *testing.T) {
	v := vectors.Load(t)
	id, err := identity.FromSecret(v.Identities[0].Mnemonic, identity.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range v.JWT {
		sid := ""
		if c.Claims.Sid != nil {
			sid = *c.Claims.Sid
		}
		t.Run("sid="+sid, func(t *testing.T) {
			iat := time.Unix(c.Claims.Iat, 0)
			tok, err := identity.NewToken(id, c.Claims.Sub, sid, iat, time.Duration(c.Claims.Exp-c.Claims.Iat)*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if tok != c.Token {
				t.Fatalf("token =\n%s\nwant\n%s", tok, c.Token)
			}
			parsed, err := identity.ParseToken(c.Token)
			if err != nil {
				t.Fatal(err)
			}
			if parsed.Claims.Twin != c.Claims.Sub || parsed.Claims.Session != sid ||
				parsed.Claims.IssuedAt != c.Claims.Iat || parsed.Claims.ExpiresAt != c.Claims.Exp {
				t.Fatalf("claims = %+v", parsed.Claims)
			}
			if err := parsed.Verify(vectors.Hex(t, c.SignerPublicHex)); err != nil {
				t.Fatal(err)
			}
			if err := parsed.CheckTime(iat.Add(10*time.Second), identity.TokenPolicy{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestJWTTimePolicy(t *testing.T) {
	id, _ := identity.FromSecret("0x"+strings.Repeat("22", 32), identity.Sr25519)
	now := time.Unix(1_800_000_000, 0)
	policy := identity.TokenPolicy{MaxLifetime: 10 * time.Minute, ClockSkew: 5 * time.Second}
	cases := []struct {
		name     string
		iat      time.Time
		lifetime time.Duration
		want     error
	}{
		{"fresh", now, time.Minute, nil},
		{"skewed a little", now.Add(4 * time.Second), time.Minute, nil},
		{"expired", now.Add(-2 * time.Minute), time.Minute, identity.ErrTokenExpired},
		{"expired within skew", now.Add(-62 * time.Second), time.Minute, nil},
		{"far future", now.Add(time.Hour), time.Minute, identity.ErrTokenFuture},
		{"too long-lived", now, 11 * time.Minute, identity.ErrTokenLifetime},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok, err := identity.NewToken(id, 7, "s1", c.iat, c.lifetime)
			if err != nil {
				t.Fatal(err)
			}
			p, err := identity.ParseToken(tok)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Verify(id.PublicKey()); err != nil {
				t.Fatal(err)
			}
			err = p.CheckTime(now, policy)
			if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("CheckTime err = %v, want %v", err, c.want)
			}
		})
	}
}

func TestJWTMalformed(t *testing.T) {
	v := vectors.Load(t)
	good := v.JWT[0].Token
	parts := strings.Split(good, ".")
	enc := func(s string) string { return b64(s) }
	cases := map[string]string{
		"empty":        "",
		"one part":     "abc",
		"two parts":    parts[0] + "." + parts[1],
		"bad base64":   "!!!." + parts[1] + "." + parts[2],
		"header json":  enc("{") + "." + parts[1] + "." + parts[2],
		"alg none":     enc(`{"alg":"none"}`) + "." + parts[1] + "." + parts[2],
		"alg HS256":    enc(`{"alg":"HS256","typ":"JWT"}`) + "." + parts[1] + "." + parts[2],
		"typ other":    enc(`{"alg":"RS512","typ":"JWS"}`) + "." + parts[1] + "." + parts[2],
		"no sub":       parts[0] + "." + enc(`{"exp":1}`) + "." + parts[2],
		"string sub":   parts[0] + "." + enc(`{"exp":1,"sub":"41"}`) + "." + parts[2],
		"negative sub": parts[0] + "." + enc(`{"exp":1,"sub":-1}`) + "." + parts[2],
		"huge sub":     parts[0] + "." + enc(`{"exp":1,"sub":4294967296}`) + "." + parts[2],
		"sid number":   parts[0] + "." + enc(`{"exp":1,"sub":1,"sid":5}`) + "." + parts[2],
		"short sig":    parts[0] + "." + parts[1] + "." + enc("short"),
		"too long":     strings.Repeat("a", identity.MaxTokenSize+1),
		"claims array": parts[0] + "." + enc(`[1,2]`) + "." + parts[2],
	}
	for name, tok := range cases {
		if _, err := identity.ParseToken(tok); !errors.Is(err, identity.ErrTokenMalformed) {
			t.Errorf("%s: err = %v, want ErrTokenMalformed", name, err)
		}
	}
	// A null sid and a header without typ are accepted (Rust peer style).
	if _, err := identity.ParseToken(enc(`{"alg":"RS512"}`) + "." + enc(`{"exp":1,"sub":1,"sid":null}`) + "." + parts[2]); err != nil {
		t.Errorf("null sid / no typ rejected: %v", err)
	}
	// Tampered claims fail the signature.
	p, err := identity.ParseToken(parts[0] + "." + enc(`{"exp":1700000060,"iat":1700000000,"sub":42}`) + "." + parts[2])
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Verify(vectors.Hex(t, v.JWT[0].SignerPublicHex)); err == nil {
		t.Error("token with changed sub still verifies")
	}
}

func b64(s string) string { return rawURL(s) }

func FuzzParseToken(f *testing.F) {
	v := vectors.Load(f)
	for _, c := range v.JWT {
		f.Add(c.Token)
	}
	f.Add("")
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJSUzUxMiJ9.e30.AA")
	id, _ := identity.FromSecret("0x"+strings.Repeat("33", 32), identity.Ed25519)
	f.Fuzz(func(t *testing.T, tok string) {
		p, err := identity.ParseToken(tok)
		if err != nil {
			if !errors.Is(err, identity.ErrTokenMalformed) {
				t.Fatalf("error %v does not wrap ErrTokenMalformed", err)
			}
			return
		}
		if len(p.Signature) != identity.SignatureSize || p.Claims.Twin == 0 {
			t.Fatalf("accepted token with bad shape: %+v", p)
		}
		_ = p.Verify(id.PublicKey())
		_ = p.CheckTime(time.Now(), identity.TokenPolicy{})
	})
}
