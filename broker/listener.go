package broker

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// listener is a mochi listeners.Listener over a net.Listener we bind
// ourselves, plain TCP or WebSocket. Compared with mochi's TCP and Websocket
// listeners it
//   - works with port 0 and reports the bound address (mochi's Websocket
//     listens inside Serve and reports the configured address);
//   - closes a socket that has not sent CONNECT within connectTimeout: mochi
//     sets no deadline before CONNECT, and replaces ours with the keepalive
//     deadline right after it (server.go attachClient → refreshDeadline);
//   - on Close, also closes sockets that never sent CONNECT (mochi only
//     disconnects registered clients and then waits for all of them) and
//     waits for every connection goroutine;
//   - has no data race on the establish error (mochi's tcp.go Serve assigns
//     the outer err from every connection goroutine).
type listener struct {
	id             string
	ln             net.Listener
	ws             bool
	connectTimeout time.Duration
	disconnect     func(listenerID string) // disconnects established clients
	log            *slog.Logger
	limits         *limits // connect rate and write timeout (limits.go); nil: none

	mu      sync.Mutex
	conns   map[net.Conn]struct{} // raw sockets being served
	closed  bool
	serving bool
	served  chan struct{} // closed when Serve returns
	http    *http.Server  // WebSocket only, once serving
	wg      sync.WaitGroup
}

func newListener(id string, ln net.Listener, ws bool, connectTimeout time.Duration, disconnect func(string), log *slog.Logger) *listener {
	return &listener{
		id:             id,
		ln:             ln,
		ws:             ws,
		connectTimeout: connectTimeout,
		disconnect:     disconnect,
		log:            log,
		conns:          map[net.Conn]struct{}{},
		served:         make(chan struct{}),
	}
}

// ID implements listeners.Listener.
func (l *listener) ID() string { return l.id }

// Address implements listeners.Listener: the bound address.
func (l *listener) Address() string { return l.ln.Addr().String() }

// Protocol implements listeners.Listener.
func (l *listener) Protocol() string {
	if l.ws {
		return "ws"
	}
	return "tcp"
}

// Init implements listeners.Listener; the socket is already bound.
func (l *listener) Init(*slog.Logger) error { return nil }

// Serve implements listeners.Listener: it accepts until Close.
func (l *listener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.serving = true
	l.mu.Unlock()
	defer close(l.served)
	if l.ws {
		l.serveWS(establish)
		return
	}
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || l.isClosed() {
				return
			}
			// Out of file descriptors and the like: wait, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("broker: accept", "listener", l.id, "error", err)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !l.limits.admit(c.RemoteAddr().String()) {
			l.limits.refuse(c)
			continue
		}
		if !l.track(c) {
			continue
		}
		go l.serveConn(c, c, establish)
	}
}

func (l *listener) serveWS(establish listeners.EstablishFn) {
	up := websocket.Upgrader{
		Subprotocols: []string{"mqtt"},
		// Devices are not browsers and authenticate with credentials, not
		// cookies, so the origin carries no authority.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	srv := &http.Server{
		ReadHeaderTimeout: l.connectTimeout,
		IdleTimeout:       l.connectTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(l.log.Handler(), slog.LevelDebug),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !l.limits.admit(r.RemoteAddr) {
				http.Error(w, "connection rate exceeded", http.StatusTooManyRequests)
				return
			}
			ws, err := up.Upgrade(w, r, nil)
			if err != nil {
				return // Upgrade has answered
			}
			raw := ws.UnderlyingConn()
			if !l.track(raw) {
				return
			}
			l.serveConn(raw, &wsConn{Conn: raw, ws: ws}, establish)
		}),
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.http = srv
	l.mu.Unlock()
	_ = srv.Serve(l.ln)
}

func (l *listener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// track registers a raw socket, or closes it if the listener is closing.
func (l *listener) track(raw net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = raw.Close()
		return false
	}
	l.conns[raw] = struct{}{}
	l.wg.Add(1)
	return true
}

func (l *listener) serveConn(raw, c net.Conn, establish listeners.EstablishFn) {
	defer func() {
		_ = raw.Close()
		l.mu.Lock()
		delete(l.conns, raw)
		l.mu.Unlock()
		l.wg.Done()
	}()
	// Until CONNECT; mochi then sets the keepalive deadline (or none).
	c = l.limits.wrap(c)
	_ = c.SetDeadline(time.Now().Add(l.connectTimeout))
	if err := establish(l.id, c); err != nil {
		l.log.Debug("broker: connection ended", "listener", l.id, "remote", raw.RemoteAddr().String(), "error", err)
	}
}

// Close implements listeners.Listener. mochi passes its closeListenerClients,
// which we do not use (see Broker.disconnectListener).
func (l *listener) Close(listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	serving, srv := l.serving, l.http
	l.mu.Unlock()

	if srv != nil {
		_ = srv.Close() // the socket, and connections still in the HTTP upgrade
	}
	_ = l.ln.Close()
	l.disconnect(l.id)
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close() // sockets that never completed CONNECT
	}
	l.mu.Unlock()
	l.wg.Wait()
	if serving {
		<-l.served
	}
}

// wsConn carries MQTT over WebSocket binary messages as a net.Conn.
type wsConn struct {
	net.Conn // the underlying socket, for addresses
	ws       *websocket.Conn
	r        io.Reader // current message, if any

	wmu sync.Mutex // gorilla allows one writer; deadlines are set concurrently
}

var errNotBinary = errors.New("websocket message is not binary")

// Read implements net.Conn over a stream of binary messages.
func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, errNotBinary
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// Write implements net.Conn: one binary message per write.
func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close implements net.Conn.
func (c *wsConn) Close() error { return c.ws.Close() }

// SetDeadline implements net.Conn. gorilla applies its own write deadline
// to every write, so a deadline set on the socket alone would be lost.
func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline implements net.Conn.
func (c *wsConn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetWriteDeadline implements net.Conn.
func (c *wsConn) SetWriteDeadline(t time.Time) error {
	_ = c.Conn.SetWriteDeadline(t) // reaches a write in progress, freeing wmu
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.SetWriteDeadline(t)
}
