// Package validation checks from inside a pod that its traffic really is
// redirected to the sidecar: what istio-validation does in CNI mode, where
// an init container (running as the proxy UID) proves the CNI plug-in
// programmed the pod before the app starts.
//
// It listens on the proxy's ports, connects to the pod's own IP on a probe
// port nobody listens on, and passes only when one of its listeners
// accepts that connection with the probe address as SO_ORIGINAL_DST. Only
// the proxy UID's traffic to the pod's own IP is redirected (to the
// inbound capture port), so the check must run as that UID.
package validation

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/meshcni/meshcni/internal/netns"
	"github.com/meshcni/meshcni/internal/origdst"
)

// ErrorCode is Istio's ValidationErrorCode: the exit code of a failed
// validation, which repair controllers look for on the init container.
const ErrorCode = 126

// ErrNotRedirected: the probe connection never reached our listeners.
var ErrNotRedirected = errors.New("traffic is not redirected to the sidecar")

// Config says what to probe.
type Config struct {
	// ListenPorts are where a redirected probe may land: the proxy port
	// and the inbound capture port. Listeners bind every address of the
	// target's family.
	ListenPorts []uint16
	// Target is the pod's own IP and the probe port (15002), where
	// nothing listens: only redirection can complete the connection.
	Target netip.AddrPort
	// Timeout bounds the whole check.
	Timeout time.Duration
	// NetNS is the network namespace path; "" means the current one.
	NetNS string
}

// Run probes until a listener sees the target as the original
// destination, or Timeout passes. A failed probe returns an error that
// wraps ErrNotRedirected; a listener that cannot bind is a plain error.
func Run(ctx context.Context, cfg Config) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	network := "tcp4"
	if cfg.Target.Addr().Is6() {
		network = "tcp6"
	}
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	err := netns.Do(cfg.NetNS, func() error {
		for _, p := range cfg.ListenPorts {
			l, err := net.Listen(network, net.JoinHostPort("", strconv.Itoa(int(p))))
			if err != nil {
				return fmt.Errorf("validation: listen on port %d: %w", p, err)
			}
			lns = append(lns, l)
		}
		return nil
	})
	if err != nil {
		return err
	}

	landed := make(chan struct{})
	var once sync.Once
	for _, l := range lns {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				dst, err := origdst.Of(c.(*net.TCPConn))
				c.Close()
				if err == nil && dst == cfg.Target {
					once.Do(func() { close(landed) })
				}
			}
		}()
	}

	for {
		err := probe(ctx, cfg, landed)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: probe to %s for %s: %v", ErrNotRedirected, cfg.Target, cfg.Timeout, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// probe makes one connection to the target and waits for a listener to
// report it.
func probe(ctx context.Context, cfg Config, landed <-chan struct{}) error {
	var conn net.Conn
	err := netns.Do(cfg.NetNS, func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, "tcp", cfg.Target.String())
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	select {
	case <-landed:
		return nil
	case <-time.After(time.Second):
		return fmt.Errorf("connected to %s, but not through a listener on ports %v", cfg.Target, cfg.ListenPorts)
	case <-ctx.Done():
		return ctx.Err()
	}
}
