package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// machine describes where the numbers were taken.
type machine struct {
	CPUs     int
	CPUModel string
	Kernel   string
	LoadAvg  string
	Iptables string
	Go       string
}

func describeMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), CPUModel: "unknown", Kernel: "unknown"}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	// Which iptables the node's `iptables` is, read from the symlink only:
	// running it, even for --version, is not needed.
	m.Iptables = "not found"
	for _, p := range []string{"/usr/sbin/iptables", "/sbin/iptables"} {
		if t, err := filepath.EvalSymlinks(p); err == nil {
			m.Iptables = filepath.Base(t)
			break
		}
	}
	return m
}

func (m machine) String() string {
	return fmt.Sprintf("%d CPUs (%s), kernel %s, load average at start %s, `iptables` is %s, %s",
		m.CPUs, m.CPUModel, m.Kernel, m.LoadAvg, m.Iptables, m.Go)
}
