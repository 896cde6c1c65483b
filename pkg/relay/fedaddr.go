package relay

import (
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// errFedAddress is the error of a federation dial to an address the relay
// refuses (Options.FederationAllowPrivate unset).
var errFedAddress = errors.New("relay: federation to a loopback, private, link-local or multicast address refused")

// sharedAddressSpace is 100.64.0.0/10 (RFC 6598, carrier-grade NAT), which
// netip does not count as private.
var sharedAddressSpace = netip.MustParsePrefix("100.64.0.0/10")

// forbiddenAddr reports whether a relay refuses to federate to a: loopback,
// private (RFC 1918, RFC 4193, RFC 6598), link-local, multicast or
// unspecified.
func forbiddenAddr(a netip.Addr) bool {
	a = a.Unmap()
	return !a.IsValid() || a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() ||
		a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() || a.IsMulticast() ||
		a.IsUnspecified() || sharedAddressSpace.Contains(a)
}

// refusedLiteral reports whether domain ("host" or "host:port") is an IP
// literal the relay refuses to federate to; names are checked when dialled.
func refusedLiteral(domain string) bool {
	host := domain
	if h, _, err := net.SplitHostPort(domain); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && forbiddenAddr(a)
}

// checkDialAddr is a net.Dialer Control func: it runs after name
// resolution, on the address about to be connected, so a name that
// resolves (or re-resolves, DNS rebinding) to a refused address is caught.
func checkDialAddr(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || forbiddenAddr(ap.Addr()) {
		return errFedAddress
	}
	return nil
}

// newFederationClient is the default Options.FederationClient: keep-alive
// with 16 idle connections per relay and, unless allowPrivate, a dialer
// that refuses loopback, private, link-local and multicast addresses. It
// dials directly (no HTTP proxy from the environment) when it checks, since
// a proxy would make the check moot.
func newFederationClient(allowPrivate bool) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 16
	if !allowPrivate {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: checkDialAddr}
		t.DialContext = d.DialContext
		t.Proxy = nil
	}
	return &http.Client{Transport: t}
}
