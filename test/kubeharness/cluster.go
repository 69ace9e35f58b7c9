package kubeharness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// DefaultCacheDir is where hack/build-kube.sh puts its binaries (under bin/)
// unless MESHCNI_CACHE says otherwise.
const DefaultCacheDir = "/var/cache/meshcni"

// ServiceAccountIssuer is the issuer of every service-account token the
// cluster signs, and their default audience.
const ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// Options tunes Start. The zero value is what tests want.
type Options struct {
	// BinDir is the only place to look for kube-apiserver and etcd. Empty
	// means ${MESHCNI_CACHE:-/var/cache/meshcni}/bin, then $PATH.
	BinDir string
	// TempDir is the parent of the cluster's working directory. Empty means
	// os.TempDir().
	TempDir string
	// StartTimeout bounds startup on top of ctx. Zero means 90s.
	StartTimeout time.Duration
	// ExtraAPIServerArgs are appended to the kube-apiserver command line
	// ("--flag=value"); a flag given twice takes the later value.
	ExtraAPIServerArgs []string
	// KeepDir keeps the working directory (logs, certificates, etcd data,
	// kubeconfigs) after Stop, for debugging.
	KeepDir bool
}

// Cluster is a running etcd and kube-apiserver. Its exported fields are set
// by Start and must not be changed.
type Cluster struct {
	// URL is the API server's address, https://127.0.0.1:<Port>.
	URL  string
	Port int
	// CAData is the PEM CA that signed the serving certificate.
	CAData []byte
	// Config authenticates as AdminUser in group system:masters.
	Config *rest.Config
	// Client is a clientset built from Config.
	Client kubernetes.Interface
	// AdminKubeconfig is the path of a kubeconfig file for Config (for
	// kubectl or a child process).
	AdminKubeconfig string
	// EtcdURL is etcd's client address, http://127.0.0.1:<port>.
	EtcdURL string
	// Dir is the working directory: kube-apiserver.log, etcd.log, pki/,
	// etcd/ and kubeconfigs/.
	Dir string

	apiserver, etcd *process
	keepDir         bool
	stopOnce        sync.Once
	stopErr         error
}

// FindBinaries returns the paths of kube-apiserver and etcd. With binDir
// set it looks only there; otherwise in ${MESHCNI_CACHE:-/var/cache/meshcni}/bin
// and then on $PATH.
func FindBinaries(binDir string) (apiserver, etcd string, err error) {
	dirs := []string{binDir}
	if binDir == "" {
		cache := os.Getenv("MESHCNI_CACHE")
		if cache == "" {
			cache = DefaultCacheDir
		}
		dirs = []string{filepath.Join(cache, "bin")}
	}
	find := func(name string) (string, error) {
		for _, dir := range dirs {
			path := filepath.Join(dir, name)
			if fi, err := os.Stat(path); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
				return path, nil
			}
		}
		where := strings.Join(dirs, ", ")
		if binDir == "" {
			if path, err := lookPath(name); err == nil {
				return path, nil
			}
			where += " or $PATH"
		}
		return "", fmt.Errorf("%s not found in %s: run hack/build-kube.sh (or make deps) to build it", name, where)
	}
	if apiserver, err = find("kube-apiserver"); err != nil {
		return "", "", err
	}
	if etcd, err = find("etcd"); err != nil {
		return "", "", err
	}
	return apiserver, etcd, nil
}

// Start runs etcd and kube-apiserver on free 127.0.0.1 ports and returns
// once the API server is ready and the default namespace exists. ctx bounds
// only the startup; the processes run until Stop. On error nothing is left
// running and the error carries the tail of the process logs.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	apiserverBin, etcdBin, err := FindBinaries(opts.BinDir)
	if err != nil {
		return nil, err
	}
	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 90 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	dir, err := os.MkdirTemp(opts.TempDir, "kubeharness-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, keepDir: opts.KeepDir}
	defer func() {
		if err != nil {
			tail := c.LogTail(40)
			_ = c.Stop()
			if tail != "" {
				err = fmt.Errorf("%w\n%s", err, tail)
			}
		}
	}()

	pkiDir := filepath.Join(dir, "pki")
	for _, d := range []string{pkiDir, filepath.Join(dir, "kubeconfigs")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
	}
	p, err := newPKI()
	if err != nil {
		return nil, err
	}
	files, err := p.write(pkiDir)
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	etcdPort, peerPort, apiPort := ports[0], ports[1], ports[2]
	c.EtcdURL = "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	c.URL, c.Port = "https://127.0.0.1:"+strconv.Itoa(apiPort), apiPort
	c.CAData = p.caCert

	c.etcd, err = startProcess("etcd", etcdBin, filepath.Join(dir, "etcd.log"),
		"--name=kubeharness",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+c.EtcdURL,
		"--advertise-client-urls="+c.EtcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubeharness="+peerURL,
		// Throwaway data: durability buys nothing and costs seconds.
		"--unsafe-no-fsync=true",
	)
	if err != nil {
		return nil, err
	}
	if err := waitEtcd(ctx, c.etcd, c.EtcdURL); err != nil {
		return nil, err
	}

	args := []string{
		"--etcd-servers=" + c.EtcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + pkiDir,
		"--tls-cert-file=" + files["serving.crt"],
		"--tls-private-key-file=" + files["serving.key"],
		"--client-ca-file=" + files["ca.crt"],
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--service-account-key-file=" + files["sa.pub"],
		"--service-account-signing-key-file=" + files["sa.key"],
		// Only stored in objects; nothing routes it.
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=Node,RBAC",
		// No controller-manager creates "default" service accounts, so
		// ServiceAccount admission would reject every pod.
		"--disable-admission-plugins=ServiceAccount",
		// The kubernetes Service's endpoints would be 127.0.0.1, which
		// validation rejects; nothing here needs them.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	}
	args = append(args, opts.ExtraAPIServerArgs...)
	c.apiserver, err = startProcess("kube-apiserver", apiserverBin, filepath.Join(dir, "kube-apiserver.log"), args...)
	if err != nil {
		return nil, err
	}

	c.Config = &rest.Config{
		Host: c.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   p.caCert,
			CertData: p.adminCert,
			KeyData:  p.adminKey,
		},
		QPS:   100,
		Burst: 200,
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, err
	}
	if err := c.waitReady(ctx); err != nil {
		return nil, err
	}

	c.AdminKubeconfig = filepath.Join(dir, "kubeconfigs", "admin.kubeconfig")
	admin := newKubeconfig(c.URL, c.CAData, &clientcmdapi.AuthInfo{
		ClientCertificateData: p.adminCert,
		ClientKeyData:         p.adminKey,
	})
	if err := writeKubeconfig(c.AdminKubeconfig, admin); err != nil {
		return nil, err
	}
	return c, nil
}

// APIServerPID is kube-apiserver's process ID (for its CPU and memory).
func (c *Cluster) APIServerPID() int { return c.apiserver.cmd.Process.Pid }

// Stop kills kube-apiserver and etcd and removes Dir unless Options.KeepDir
// was set. It is safe to call more than once.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		for _, p := range []*process{c.apiserver, c.etcd} {
			if p != nil {
				errs = append(errs, p.stop())
			}
		}
		if !c.keepDir && c.Dir != "" {
			errs = append(errs, os.RemoveAll(c.Dir))
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}

// LogTail returns the last n lines of each process log, labelled, for
// error messages.
func (c *Cluster) LogTail(n int) string {
	var b strings.Builder
	for _, p := range []*process{c.etcd, c.apiserver} {
		if p == nil {
			continue
		}
		if tail := p.tail(n); tail != "" {
			fmt.Fprintf(&b, "--- last lines of %s ---\n%s", p.logPath, tail)
		}
	}
	return b.String()
}

func (c *Cluster) waitReady(ctx context.Context) error {
	rc := c.Client.Discovery().RESTClient()
	var last error
	ready := func(ctx context.Context) bool {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		body, err := rc.Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			last = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(body)))
			return false
		}
		_, err = c.Client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{})
		if err != nil {
			if !apierrors.IsNotFound(err) {
				last = err
			} else {
				last = errors.New(`namespace "default" not created yet`)
			}
			return false
		}
		return true
	}
	for {
		if ready(ctx) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver at %s not ready: %w (last: %v)", c.URL, ctx.Err(), last)
		case <-c.apiserver.done:
			return fmt.Errorf("kube-apiserver exited during startup: %v", c.apiserver.waitErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func waitEtcd(ctx context.Context, p *process, url string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			buf := make([]byte, 512)
			n, _ := resp.Body.Read(buf)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(buf[:n]), `"health":"true"`) {
				return nil
			}
			err = fmt.Errorf("%s: %s", resp.Status, buf[:n])
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd at %s not healthy: %w (last: %v)", url, ctx.Err(), last)
		case <-p.done:
			return fmt.Errorf("etcd exited during startup: %v", p.waitErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. They are free
// when checked; another process could take one before it is used.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
