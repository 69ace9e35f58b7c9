// Command box is the one static binary inside the end-to-end suite's
// container images (test/e2e):
//
//	box pause                         the pod sandbox: sleeps until SIGTERM
//	box serve NAME=ADDR...            answers each connection with "NAME <original destination>"
//	box ask ADDR                      dials ADDR and prints the answer
//
// serve also prints each connection to stdout, the container's log:
// "NAME <original destination> from <peer> (served by uid <uid>)". As the stand-in
// sidecar (outbound=:15001 inbound=:15006, as UID 1337) that line is the
// record of a redirected connection; as the app it proves traffic arrived
// directly.
package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
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
	case "serve":
		err = serve(os.Args[2:])
	case "ask":
		if len(os.Args) != 3 {
			usage()
		}
		err = ask(os.Args[2])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "box:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: box pause | box serve NAME=ADDR... | box ask ADDR")
	os.Exit(2)
}

func serve(specs []string) error {
	if len(specs) == 0 {
		usage()
	}
	errs := make(chan error, len(specs))
	for _, s := range specs {
		name, addr, ok := strings.Cut(s, "=")
		if !ok {
			usage()
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		fmt.Printf("%s listening on %s as uid %d\n", name, addr, os.Getuid())
		go func() { errs <- accept(l, name) }()
	}
	return <-errs
}

func accept(l net.Listener, name string) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		tc := c.(*net.TCPConn)
		orig := workload.OrigDst(tc)
		peer := tc.RemoteAddr().(*net.TCPAddr).AddrPort()
		fmt.Printf("%s %s from %s (served by uid %d)\n", name, orig, netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()), os.Getuid())
		_, _ = fmt.Fprintf(c, "%s %s\n", name, orig)
		_ = c.Close()
	}
}

func ask(addr string) error {
	line, err := workload.Ask(addr, 3*time.Second)
	if err != nil {
		return err
	}
	fmt.Println(line)
	return nil
}
