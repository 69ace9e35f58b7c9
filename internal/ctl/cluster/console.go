package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"runtime"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"

	"github.com/meshcni/meshcni/internal/console"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
)

// ConsoleOptions is `meshcnictl console`: the console page on loopback,
// through the user's kubeconfig.
type ConsoleOptions struct {
	genericiooptions.IOStreams
	flags *genericclioptions.ConfigFlags

	Address     string
	Port        int
	Service     string // [scheme:]name of the controller's Service
	ServicePort string // its port, by name or number
	Open        bool
	Local       bool

	namespace string
	cfg       *rest.Config
}

// NewCmdConsole is `meshcnictl console`.
func NewCmdConsole(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &ConsoleOptions{IOStreams: streams, flags: flags}
	cmd := &cobra.Command{
		Use:   "console [--port N] [--address 127.0.0.1] [--open]",
		Short: "Open the meshcni console in a browser, through your kubeconfig",
		Long: `Serve the meshcni console on a local port, like kubectl port-forward.

Each request goes to meshcni-controller's console through the API server's
service proxy, signed with your kubeconfig's credentials, so your own RBAC
rights decide what you can change: without "update" on meshcnis the page is
read-only and says why. The console needs a bearer token to act as you
(a token, an exec plug-in, an auth provider); with a client certificate,
use --local, which serves the page from this process instead.`,
		Args: cobra.NoArgs,
		RunE: cmdutil.RunE(o),
	}
	cmd.Flags().StringVar(&o.Address, "address", "127.0.0.1", "the local address to listen on")
	cmd.Flags().IntVar(&o.Port, "port", 0, "the local port to listen on (0: a free one)")
	cmd.Flags().StringVar(&o.Service, "service", "https:meshcni-controller", "the controller's Service, [scheme:]name")
	cmd.Flags().StringVar(&o.ServicePort, "service-port", "console", "the Service's console port, by name or number")
	cmd.Flags().BoolVar(&o.Open, "open", false, "open the URL in the default browser (xdg-open or open)")
	cmd.Flags().BoolVar(&o.Local, "local", false, "serve the page from this process with your kubeconfig, not through meshcni-controller")
	return cmd
}

// Complete reads the kubeconfig and the namespace.
func (o *ConsoleOptions) Complete() error {
	var err error
	if o.cfg, err = o.flags.ToRESTConfig(); err != nil {
		return fmt.Errorf("kubeconfig: %w (pass --kubeconfig or set KUBECONFIG)", err)
	}
	o.namespace = cmdutil.Namespace(o.flags)
	return nil
}

// Validate checks the flags.
func (o *ConsoleOptions) Validate() error {
	ip := net.ParseIP(o.Address)
	if ip == nil && o.Address != "localhost" {
		return fmt.Errorf("--address %q: want an IP address or localhost", o.Address)
	}
	// Whoever reaches the port acts with your credentials: one address,
	// which the browser must name (the Host check), never all of them.
	if ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("--address %s would let anyone who reaches this machine act with your credentials; give one address (default 127.0.0.1)", o.Address)
	}
	if o.Port < 0 || o.Port > 65535 {
		return fmt.Errorf("--port %d: want 0 to 65535", o.Port)
	}
	if !o.Local && !hasToken(o.cfg) {
		return errors.New("your kubeconfig authenticates without a bearer token (a client certificate?), which the console cannot act as; run \"meshcnictl console --local\" to serve the page from here with your kubeconfig")
	}
	return nil
}

// hasToken says whether cfg's requests carry a bearer token the console
// can act as.
func hasToken(cfg *rest.Config) bool {
	return cfg.BearerToken != "" || cfg.BearerTokenFile != "" || cfg.ExecProvider != nil || cfg.AuthProvider != nil
}

// Run serves until ctx ends.
func (o *ConsoleOptions) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(o.Address, strconv.Itoa(o.Port)))
	if err != nil {
		return fmt.Errorf("listen on %s:%d: %w (choose another --port)", o.Address, o.Port, err)
	}
	listen := ln.Addr().String()
	var h http.Handler
	if o.Local {
		page, err := console.New(console.Options{Config: o.cfg, Namespace: o.namespace, Local: true})
		if err != nil {
			ln.Close()
			return err
		}
		h = console.Guard(listen, page)
	} else {
		target, err := console.ServiceProxyURL(o.cfg, o.namespace, o.Service, o.ServicePort)
		if err == nil {
			h, err = console.NewForwarder(target, o.cfg, listen)
		}
		if err != nil {
			ln.Close()
			return err
		}
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	u := (&url.URL{Scheme: "http", Host: listen, Path: "/"}).String()
	via := "through the API server to service " + o.Service + ":" + o.ServicePort + " in " + o.namespace
	if o.Local {
		via = "served here with your kubeconfig"
	}
	fmt.Fprintf(o.Out, "meshcni console: %s (%s); Ctrl-C stops it\n", u, via)
	if o.Open {
		if err := openBrowser(u); err != nil {
			fmt.Fprintf(o.ErrOut, "could not open a browser (%v): open %s yourself\n", err, u)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// The page's event stream stays open: close it rather than wait.
	if err := srv.Shutdown(shutdown); err != nil {
		srv.Close()
	}
	return nil
}

func openBrowser(u string) error {
	name := "xdg-open"
	if runtime.GOOS == "darwin" {
		name = "open"
	}
	cmd := exec.Command(name, u)
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait() //nolint:errcheck // the browser outlives it or not; nothing to do either way
	return nil
}
