package relay

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A twin that connects here but lists other relay domains at the registrar
// is a misconfiguration that hides well: envelopes for it are delivered
// while it is online, and federated to the other domains while it is not
// (often to this very relay under another name, such as localhost:8080
// for 127.0.0.1:8080, which then refuses them: a 504 for the caller).
// domainCheck says so when such a twin connects, once per twin per
// domainWarnInterval; a listed domain that resolves to the address the
// twin connected to is this relay under another name, and from then on
// counts as one of its domains.
const (
	domainWarnInterval = 10 * time.Minute
	// maxDomainWarned bounds the twins remembered as warned about; when
	// it is full and none is older than the interval, warnings are
	// suppressed (counted) until entries age out.
	maxDomainWarned = 10000
	// maxDomainAliases bounds the names learnt to be this relay.
	maxDomainAliases = 16
	// maxDomainLookups bounds the name lookups in flight; a check that
	// finds them all busy is skipped (counted).
	maxDomainLookups = 4
	// maxDomainChecked bounds the federation domains remembered as
	// looked up (each once per domainWarnInterval).
	maxDomainChecked    = 1024
	domainLookupTimeout = 2 * time.Second
)

type domainCheck struct {
	r       *Relay
	aliases atomic.Pointer[map[string]bool] // copied on write
	lookups chan struct{}                   // semaphore of lookups in flight
	results *prometheus.CounterVec          // by result

	local atomic.Pointer[string] // an address a twin reached this relay on

	mu      sync.Mutex
	warned  map[uint32]time.Time // twin -> when last warned about
	checked map[string]time.Time // federation domain -> when looked up
}

func newDomainCheck(r *Relay) *domainCheck {
	d := &domainCheck{r: r, lookups: make(chan struct{}, maxDomainLookups), warned: make(map[uint32]time.Time), checked: make(map[string]time.Time)}
	d.aliases.Store(&map[string]bool{})
	d.results = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rmb_relay_domain_mismatch_total",
		Help: "Twins connected here that list none of this relay's domains at the registrar, by result: foreign (warned), alias (a listed name is this relay), suppressed (not warned again within the interval, or the bounds were full).",
	}, []string{"result"})
	for _, res := range []string{"foreign", "alias", "suppressed"} {
		d.results.WithLabelValues(res)
	}
	r.metrics.reg.MustRegister(d.results)
	return d
}

// isAlias reports whether domain was found to be this relay.
func (d *domainCheck) isAlias(domain string) bool {
	m := *d.aliases.Load()
	return len(m) > 0 && m[strings.ToLower(domain)]
}

func (d *domainCheck) addAlias(domain string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := *d.aliases.Load()
	if len(old) >= maxDomainAliases || old[strings.ToLower(domain)] {
		return false
	}
	m := make(map[string]bool, len(old)+1)
	for k := range old {
		m[k] = true
	}
	m[strings.ToLower(domain)] = true
	d.aliases.Store(&m)
	return true
}

// shouldWarn reports whether twin is due a warning, and remembers it.
func (d *domainCheck) shouldWarn(twin uint32, now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if last, ok := d.warned[twin]; ok && now.Sub(last) < domainWarnInterval {
		return false
	}
	if len(d.warned) >= maxDomainWarned {
		for k, t := range d.warned {
			if now.Sub(t) >= domainWarnInterval {
				delete(d.warned, k)
			}
		}
		if len(d.warned) >= maxDomainWarned {
			return false
		}
	}
	d.warned[twin] = now
	return true
}

// seen records an address a connection reached this relay on, for
// federating.
func (d *domainCheck) seen(req *http.Request) {
	if local, ok := req.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		s := local.String()
		d.local.Store(&s)
	}
}

// federating looks, in the background and once per domain per interval,
// at whether relays (a destination's, none of ours) name this relay
// itself: then the name becomes ours and later envelopes for the twin are
// kept here, not federated to ourselves. The envelope at hand is
// federated as before.
func (d *domainCheck) federating(relays []string) {
	lp := d.local.Load()
	if lp == nil {
		return
	}
	now := time.Now()
	for _, dom := range relays {
		key := strings.ToLower(dom)
		d.mu.Lock()
		last, ok := d.checked[key]
		due := !ok || now.Sub(last) >= domainWarnInterval
		if due && !ok && len(d.checked) >= maxDomainChecked {
			for k, t := range d.checked {
				if now.Sub(t) >= domainWarnInterval {
					delete(d.checked, k)
				}
			}
			due = len(d.checked) < maxDomainChecked
		}
		if due {
			d.checked[key] = now
		}
		d.mu.Unlock()
		if !due {
			continue
		}
		select {
		case d.lookups <- struct{}{}:
		default:
			d.results.WithLabelValues("suppressed").Inc()
			continue
		}
		go func() {
			defer func() { <-d.lookups }()
			if d.resolvesTo(dom, *lp) && d.addAlias(dom) {
				d.results.WithLabelValues("alias").Inc()
				d.r.log.Warn("federation to a destination's relay would reach this relay itself; treating the name as this relay's: add it with --domain",
					"name", dom, "domains", d.r.opts.Domains)
			}
		}()
	}
}

// connected looks at the relays twin lists, as it connects through req.
// It returns at once; lookups run in the background.
func (d *domainCheck) connected(req *http.Request, twin uint32, relays []string) {
	if d.local.Load() == nil {
		d.seen(req)
	}
	if len(relays) == 0 || d.r.isOurs(relays) {
		return
	}
	if !d.shouldWarn(twin, time.Now()) {
		d.results.WithLabelValues("suppressed").Inc()
		return
	}
	local, _ := req.Context().Value(http.LocalAddrContextKey).(net.Addr)
	select {
	case d.lookups <- struct{}{}:
	default:
		d.results.WithLabelValues("suppressed").Inc()
		return
	}
	relays = append([]string(nil), relays...)
	go func() {
		defer func() { <-d.lookups }()
		d.check(twin, relays, local)
	}()
}

func (d *domainCheck) check(twin uint32, relays []string, local net.Addr) {
	ours := d.r.opts.Domains
	for _, dom := range relays {
		if local != nil && d.resolvesTo(dom, local.String()) {
			d.addAlias(dom)
			d.results.WithLabelValues("alias").Inc()
			d.r.log.Warn("a twin lists this relay under a name that is not one of its domains; treating the name as this relay's: add it with --domain",
				"twin", twin, "name", dom, "domains", ours)
			return
		}
	}
	d.results.WithLabelValues("foreign").Inc()
	d.r.log.Warn("a twin connected that lists none of this relay's domains at the registrar: envelopes for it are federated to those relays while it is offline; register it with one of this relay's domains, or add the name with --domain",
		"twin", twin, "relays", relays, "domains", ours)
}

// resolvesTo reports whether domain (host or host:port, as twins list
// relays; the port defaults to the federation scheme's) names local, the
// address a connection reached this relay on.
func (d *domainCheck) resolvesTo(domain, local string) bool {
	lap, err := netip.ParseAddrPort(local)
	if err != nil {
		return false
	}
	host, port, err := net.SplitHostPort(domain)
	if err != nil {
		host, port = domain, "443"
		if d.r.opts.FederationScheme == "http" {
			port = "80"
		}
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || uint16(p) != lap.Port() {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), domainLookupTimeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return false
	}
	la := lap.Addr().Unmap()
	for _, ip := range ips {
		ip = ip.Unmap()
		if ip == la || (ip.IsLoopback() && la.IsLoopback()) {
			return true
		}
	}
	return false
}
