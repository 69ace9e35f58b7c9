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
