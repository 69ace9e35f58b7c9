package agent

import (
	"net"
	"sync"
)

// capListener bounds the connections the health server holds: at most
// max in all and perPeer from one remote IP. A connection over either
// cap is closed at once instead of waiting to be accepted
// (netutil.LimitListener blocks Accept, so one client holding every slot
// with idle connections starves the kubelet's probes and Prometheus in
// the accept queue). The per-peer cap keeps a flood from one address from
// taking the slots of the others.
type capListener struct {
	net.Listener
	max, perPeer int

	mu    sync.Mutex
	total int
	peers map[string]int
}

func newCapListener(l net.Listener, max, perPeer int) *capListener {
	return &capListener{Listener: l, max: max, perPeer: perPeer, peers: map[string]int{}}
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		peer := peerIP(c)
		if l.take(peer) {
			return &capConn{Conn: c, release: func() { l.release(peer) }}, nil
		}
		_ = c.Close()
	}
}

func (l *capListener) take(peer string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.max || l.peers[peer] >= l.perPeer {
		return false
	}
	l.total++
	l.peers[peer]++
	return true
}

func (l *capListener) release(peer string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.peers[peer]--; l.peers[peer] <= 0 {
		delete(l.peers, peer)
	}
}

func peerIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return c.RemoteAddr().String()
}

// capConn gives its slot back once, however often it is closed.
type capConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *capConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
