package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths and a pool that trusts the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "rmb-relay test"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestTLS(t *testing.T) {
	reg := httptest.NewServer(registrar.NewServer(nil).Handler())
	defer reg.Close()
	const domain = "relay.test"
	a := register(t, reg.URL, domain)
	b := register(t, reg.URL, domain)
	certFile, keyFile, pool := selfSigned(t)

	m := NewMain()
	m.Stderr = &syncBuffer{}
	if err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "-m", domain, "--registrar", reg.URL,
		"--tls-cert", certFile, "--tls-key", keyFile}); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	// HTTPS: the health check answers, plain HTTP on the same port does not.
	resp, err := hc.Get("https://" + m.Addr() + "/healthz")
	if err != nil {
		t.Fatalf("https healthz: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("https healthz: %s", resp.Status)
	}
	if resp, err := http.Get("http://" + m.Addr() + "/healthz"); err == nil && resp.StatusCode == http.StatusOK {
		t.Fatal("plain HTTP answered 200 on the TLS port")
	}
	// A client that does not trust the certificate is refused.
	if _, err := (&http.Client{}).Get("https://" + m.Addr() + "/healthz"); err == nil {
		t.Fatal("an untrusted certificate was accepted")
	}

	// WSS: two twins exchange a request.
	dial := func(tw *twin) *websocket.Conn {
		tok, _ := identity.NewToken(tw.id, tw.num, "", time.Now(), time.Minute)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, "wss://"+m.Addr()+"/?"+tok, &websocket.DialOptions{HTTPClient: hc})
		if err != nil {
			t.Fatalf("wss dial: %v", err)
		}
		t.Cleanup(func() { c.CloseNow() })
		return c
	}
	ca, cb := dial(a), dial(b)
	e := envelope.NewRequest("tls-1", "cmd", []byte("over tls"), 60)
	e.Source, e.Destination = envelope.NewAddress(a.num, ""), envelope.NewAddress(b.num, "")
	e.Stamp(time.Now())
	e.Sign(a.id)
	raw, _ := envelope.Marshal(e)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ca.Write(ctx, websocket.MessageBinary, raw); err != nil {
		t.Fatal(err)
	}
	_, got, err := cb.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if g, err := envelope.Unmarshal(got, 0); err != nil || g.Uid != "tls-1" || string(g.PayloadBytes()) != "over tls" {
		t.Fatalf("received %v, %v", g, err)
	}
}

func TestTLSFlagErrors(t *testing.T) {
	certFile, keyFile, _ := selfSigned(t)
	m := NewMain()
	m.Stderr = &syncBuffer{}
	if err := m.ParseFlags([]string{"-m", "x", "--registrar", "http://127.0.0.1:1", "--tls-cert", certFile}); err == nil ||
		!strings.Contains(err.Error(), "go together") {
		t.Fatalf("cert without key: %v", err)
	}
	// A key file that is not a key: Run fails with a clear error, before
	// anything is served.
	bad := filepath.Join(t.TempDir(), "bad.pem")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	m = NewMain()
	m.Stderr = &syncBuffer{}
	if err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "-m", "x", "--registrar", "http://127.0.0.1:1",
		"--tls-cert", certFile, "--tls-key", bad}); err != nil {
		t.Fatal(err)
	}
	err := m.Run(context.Background())
	if err == nil {
		m.Close()
		t.Fatal("Run accepted a bad TLS key")
	}
	if !strings.Contains(err.Error(), "--tls-cert/--tls-key") {
		t.Errorf("error does not name the flags: %v", err)
	}
	// Certificate and key swapped: refused too.
	m = NewMain()
	m.Stderr = &syncBuffer{}
	m.ParseFlags([]string{"--listen", "127.0.0.1:0", "-m", "x", "--registrar", "http://127.0.0.1:1",
		"--tls-cert", keyFile, "--tls-key", certFile})
	if err := m.Run(context.Background()); err == nil {
		m.Close()
		t.Fatal("Run accepted swapped certificate and key")
	}
}
