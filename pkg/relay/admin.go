package relay

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// SessionInfo describes a live session, as listed by GET /api/sessions.
type SessionInfo struct {
	Twin        uint32    `json:"twin"`
	SID         string    `json:"sid"`
	Remote      string    `json:"remote"`
	ConnectedAt time.Time `json:"connected_at"`
	SendQueue   int       `json:"send_queue"`
	// SendQueueBytes are the bytes of the envelopes in the send queue.
	SendQueueBytes int64 `json:"send_queue_bytes"`
	// MessagesIn and BytesIn count the envelopes read from the session,
	// MessagesOut and BytesOut those written to it; Dropped counts those
	// read that were not routed (rate limited, refused, malformed, ...:
	// the relay's rmb_relay_dropped_total says why).
	MessagesIn  uint64 `json:"messages_in"`
	BytesIn     uint64 `json:"bytes_in"`
	MessagesOut uint64 `json:"messages_out"`
	BytesOut    uint64 `json:"bytes_out"`
	Dropped     uint64 `json:"dropped"`
	// Instance is the relay instance serving the session (cluster only).
	Instance string `json:"instance,omitempty"`
}

// Sessions lists the live sessions of this relay (in a cluster: of this
// instance).
func (r *Relay) Sessions() []SessionInfo {
	var out []SessionInfo
	inst := ""
	if r.cl != nil {
		inst = r.opts.Instance
	}
	for _, s := range r.liveSessions(nil) {
		out = append(out, SessionInfo{
			Twin: s.key.Twin, SID: s.key.SID, Remote: s.remote,
			ConnectedAt: s.connectedAt.UTC(), SendQueue: s.queued(), Instance: inst,
			SendQueueBytes: s.queuedBytes(),
			MessagesIn:     s.msgsIn.Load(), BytesIn: s.bytesIn.Load(),
			MessagesOut: s.msgsOut.Load(), BytesOut: s.bytesOut.Load(),
			Dropped: s.dropped(),
		})
	}
	return out
}

// Disconnect closes every session of twin and returns how many there were.
// Their unsent envelopes go back to the store.
func (r *Relay) Disconnect(twin uint32) int {
	live := r.liveSessions(func(k SessionKey) bool { return k.Twin == twin })
	for _, s := range live {
		s.log.Info("disconnected by admin")
		s.close(statusRevoked, "disconnected by the relay operator")
	}
	return len(live)
}

// adminHandler serves the admin API under /api/, behind the bearer token:
//
//	GET    /api/stats           counters (Stats)
//	GET    /api/sessions        live sessions ([]SessionInfo)
//	DELETE /api/sessions/{twin} close every session of twin: {"closed": n}
//
// In a cluster the sessions are those of every instance that answers
// within a second over NATS (each lists at most 1000), and DELETE closes
// the twin's sessions on every instance.
//
// Without Options.AdminToken the API answers 404.
func (r *Relay) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/stats", func(w http.ResponseWriter, req *http.Request) {
		writeJSON(w, http.StatusOK, r.stats())
	})
	mux.HandleFunc("GET /api/sessions", func(w http.ResponseWriter, req *http.Request) {
		var list []SessionInfo
		if r.cl != nil {
			list = r.cl.sessions()
		} else {
			list = r.Sessions()
		}
		if list == nil {
			list = []SessionInfo{}
		}
		writeJSON(w, http.StatusOK, list)
	})
	mux.HandleFunc("DELETE /api/sessions/{twin}", func(w http.ResponseWriter, req *http.Request) {
		twin, err := strconv.ParseUint(req.PathValue("twin"), 10, 32)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad twin id"})
			return
		}
		var n int
		if r.cl != nil {
			n = r.cl.disconnect(uint32(twin))
		} else {
			n = r.Disconnect(uint32(twin))
		}
		writeJSON(w, http.StatusOK, map[string]int{"closed": n})
	})
	token := []byte("Bearer " + r.opts.AdminToken)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.opts.AdminToken == "" {
			http.NotFound(w, req)
			return
		}
		if subtle.ConstantTimeCompare([]byte(req.Header.Get("Authorization")), token) != 1 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "admin token required"})
			return
		}
		mux.ServeHTTP(w, req)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
