package netfilter

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// Backend is how a node programs pods: one of the two iptables
// implementations, or native nftables. Its value is the name users write
// (iptables_backend, --iptables-backend, the node label), spelt so that
// the three cannot be confused; ParseBackend also takes the older
// spellings "legacy" and "nft".
type Backend string

const (
	// Legacy is iptables-legacy: iptables rules in the kernel's x_tables.
	Legacy Backend = "iptables-legacy"
	// NFT is iptables-nft: iptables rules, stored by the kernel's
	// nftables (tables ip nat, ip mangle, ...).
	NFT Backend = "iptables-nft"
	// Nftables is meshcni's own nftables tables, "ip meshcni" and "ip6
	// meshcni", written over netlink or with nft (package nftrules).
	Nftables Backend = "nftables"
	// Auto lets existing rules decide, then the system's `iptables`.
	Auto Backend = ""
)

// ParseBackend accepts iptables-legacy, iptables-nft, nftables, or
// auto/empty; legacy and nft are aliases of the first two.
func ParseBackend(s string) (Backend, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return Auto, nil
	case "iptables-legacy", "legacy":
		return Legacy, nil
	case "iptables-nft", "nft":
		return NFT, nil
	case "nftables":
		return Nftables, nil
	}
	return "", fmt.Errorf("iptables backend %q: must be iptables-legacy, iptables-nft, nftables (native) or auto (legacy and nft are accepted too)", s)
}

// Command is the iptables command of an iptables backend for a family
// ("iptables-legacy", "ip6tables-nft"), the one every tool of it is named
// after; "" for nftables and auto.
func (b Backend) Command(ipv6 bool) string {
	suffix, ok := map[Backend]string{Legacy: "legacy", NFT: "nft"}[b]
	if !ok {
		return ""
	}
	if ipv6 {
		return "ip6tables-" + suffix
	}
	return "iptables-" + suffix
}

// Runner runs one command with stdin and returns its stdout. It is the
// seam between rule logic and the kernel: tests assert argv and stdin.
type Runner func(ctx context.Context, env []string, stdin string, name string, args ...string) (string, error)

// searchDirs is where iptables lives on Debian and most nodes; a CNI
// plug-in's PATH is often empty.
var searchDirs = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"}

func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return lookIn("/", name)
}

// lookIn finds name in the search dirs below root; the returned path is
// relative to root (what a process chrooted there would exec).
func lookIn(root, name string) (string, error) {
	for _, d := range searchDirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(filepath.Join(root, p)); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	pkg := "iptables"
	if name == "nft" {
		pkg = "nftables"
	}
	return "", fmt.Errorf("%s not found in PATH or %s under %s: install %s on the node", name, strings.Join(searchDirs, ", "), root, pkg)
}

// HostRootRunner runs the binaries of another root file system, chrooted
// there, in the caller's network namespace. The agent's image carries no
// iptables; with hostPID it runs the node's own through /proc/1/root, so
// the rules it writes are the node's version and backend.
func HostRootRunner(root string) Runner {
	return func(ctx context.Context, env []string, stdin string, name string, args ...string) (string, error) {
		path, err := lookIn(root, name)
		if err != nil {
			return "", err
		}
		cmd := exec.CommandContext(ctx, path, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		cmd.Dir = "/"
		return run(cmd, env, stdin, name, args)
	}
}

// HasLocalIPTables reports whether this file system has iptables-restore.
func HasLocalIPTables() bool {
	_, err := lookPath("iptables-restore")
	return err == nil
}

// ExecRunner runs real binaries, in the caller's (locked) network namespace.
func ExecRunner(ctx context.Context, env []string, stdin string, name string, args ...string) (string, error) {
	path, err := lookPath(name)
	if err != nil {
		return "", err
	}
	return run(exec.CommandContext(ctx, path, args...), env, stdin, name, args)
}

func run(cmd *exec.Cmd, env []string, stdin, name string, args []string) (string, error) {
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, explain(errb.String()))
	}
	return out.String(), nil
}

// explain turns the kernel's terse complaints into what to fix.
func explain(stderr string) string {
	msg := strings.TrimSpace(stderr)
	switch {
	case strings.Contains(msg, "TPROXY") && (strings.Contains(msg, "No such file") || strings.Contains(msg, "Couldn't load target")):
		return msg + " (TPROXY needs the xt_TPROXY kernel module on the node)"
	case strings.Contains(msg, "Chain already exists"):
		return msg + " (ISTIO_* chains already exist in this netns, programmed by someone else)"
	case strings.Contains(msg, "tproxy") && strings.Contains(msg, "No such file"):
		return msg + " (nftables TPROXY needs the nft_tproxy kernel module on the node)"
	case strings.Contains(msg, "Permission denied") || strings.Contains(msg, "Operation not permitted"):
		return msg + " (needs CAP_NET_ADMIN in the pod's network namespace)"
	}
	return msg
}

// binary returns the command name for a backend, family and tool
// ("save" or "restore").
func binary(b Backend, ipv6 bool, tool string) string {
	return b.Command(ipv6) + "-" + tool
}

// Commands lists what a backend runs on the node, for `meshcnictl doctor`.
func Commands(b Backend) []string {
	if b == Nftables {
		return []string{"nft"}
	}
	var out []string
	for _, v6 := range []bool{false, true} {
		for _, tool := range []string{"restore", "save"} {
			out = append(out, binary(b, v6, tool))
		}
	}
	return out
}

// SystemDefault is the backend the node's `iptables` command uses (below
// root; "" or "/" for this file system), read from where the alternatives
// link points; no command is run.
func SystemDefault(root string) Backend {
	if root == "" {
		root = "/"
	}
	p, err := lookIn(root, "iptables")
	if err != nil {
		return NFT
	}
	// Resolve link by link inside root: absolute targets are root's.
	for i := 0; i < 8; i++ {
		target, err := os.Readlink(filepath.Join(root, p))
		if err != nil {
			break
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		p = target
	}
	if strings.Contains(p, "legacy") {
		return Legacy
	}
	return NFT
}
