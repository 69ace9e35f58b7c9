// Command standin is the one static binary inside test/cluster's images,
// which stand in for images this machine cannot pull (no registry): the
// pod sandbox, Istio's proxyv2 and the Bookinfo apps. It is chosen by its
// arguments, so the Istio-injected manifests run unchanged:
//
//	standin pause                  the pod sandbox: sleeps until SIGTERM
//	standin proxy ...              istio-proxy (Istio's args follow "proxy"):
//	                               :15001 outbound, :15006 inbound, :15021 /healthz/ready
//	standin istio-iptables ...     istio-init / istio-validation: execs
//	                               /meshcni-iptables, meshcni's drop-in for it
//	standin app                    a Bookinfo app: answers on :9080
//	standin ask ADDR               dials ADDR and prints the answer (kubectl exec)
//
// Each server answers one line saying who answered and what it saw, and
// the sidecar forwards what it gets the way Envoy would, so one `ask` from
// productpage's app container shows the whole path:
//
//	outbound 10.96.0.12:9080 at productpage-v1-x (uid 1337) | inbound 10.244.1.3:9080 at details-v1-y (uid 1337) | app details-v1-y
//
// The sidecar's own connections run as UID 1337, which the capture rules
// let through; each connection is also logged to stdout (the container log).
package main

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/meshcni/meshcni/test/workload"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "pause":
		workload.Pause()
	case "proxy":
		err = proxy()
	case "istio-iptables":
		// Istio's image runs "pilot-agent istio-iptables ARGS"; meshcni's
		// drop-in takes the same ARGS.
		err = syscall.Exec("/meshcni-iptables", append([]string{"meshcni-iptables"}, os.Args[2:]...), os.Environ())
	case "app":
		err = serve(":9080", func(_ netip.AddrPort) string { return "app " + hostname() })
	case "ask":
		if len(os.Args) != 3 {
			usage()
		}
		var answer string
		if answer, err = ask(os.Args[2]); err == nil {
			fmt.Println(answer)
		}
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "standin:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: standin pause | proxy ... | istio-iptables ... | app | ask ADDR")
	os.Exit(2)
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// proxy is the stand-in Envoy: outbound connections (redirected to 15001)
// go on to their original destination; inbound ones (15006) to the app on
// localhost, at the original port.
func proxy() error {
	errs := make(chan error, 3)
	go func() {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		errs <- http.ListenAndServe(":15021", mux)
	}()
	me := fmt.Sprintf("at %s (uid %d)", hostname(), os.Getuid())
	go func() {
		errs <- serve(":15001", func(orig netip.AddrPort) string {
			return forward("outbound "+orig.String()+" "+me, orig.String())
		})
	}()
	go func() {
		errs <- serve(":15006", func(orig netip.AddrPort) string {
			return forward("inbound "+orig.String()+" "+me, net.JoinHostPort("127.0.0.1", strconv.Itoa(int(orig.Port()))))
		})
	}()
	return <-errs
}

func forward(prefix, addr string) string {
	answer, err := ask(addr)
	if err != nil {
		return prefix + " | error: " + err.Error()
	}
	return prefix + " | " + answer
}

// serve answers each connection on addr with one line from answer, given
// the connection's original destination (its local address when it was
// not redirected).
func serve(addr string, answer func(orig netip.AddrPort) string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s as uid %d\n", addr, os.Getuid())
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			line := answer(workload.OrigDst(c.(*net.TCPConn)))
			fmt.Printf("%s: from %s: %s\n", addr, c.RemoteAddr(), line)
			_, _ = fmt.Fprintln(c, line)
		}()
	}
}

func ask(addr string) (string, error) { return workload.Ask(addr, 5*time.Second) }
