//go:build integration

package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshcni/meshcni/internal/ctl/node"
	"github.com/meshcni/meshcni/test/kubeharness"
)

// doctorNode is a node's CNI dirs in temp dirs: a bridge conflist with
// meshcni last, their binaries and meshcni's lookup helper, and a
// kubeconfig that may get pods.
type doctorNode struct {
	conf, bin, kubeconfig, socket string
}

func newDoctorNode(t *testing.T) *doctorNode {
	t.Helper()
	d := &doctorNode{conf: t.TempDir(), bin: t.TempDir(), kubeconfig: pluginKubeconfig(t, "meshcni-doctor")}
	d.socket = filepath.Join(t.TempDir(), "log.sock")
	d.writeConflist(t, "bridge", "meshcni")
	for _, b := range []string{"bridge", "meshcni", "meshcni-lookup"} {
		if err := os.WriteFile(filepath.Join(d.bin, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func (d *doctorNode) writeConflist(t *testing.T, types ...string) {
	t.Helper()
	var plugins []any
	for _, typ := range types {
		p := map[string]any{"type": typ}
		if typ == "meshcni" {
			p["kubeconfig"] = d.kubeconfig
			p["log_socket"] = d.socket
		}
		plugins = append(plugins, p)
	}
	b, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": plugins})
	if err := os.WriteFile(filepath.Join(d.conf, "10-net.conflist"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (d *doctorNode) doctor(t *testing.T) (string, error) {
	t.Helper()
	out, errOut, err := meshcnictl(context.Background(), "doctor", "--cni-conf-dir", d.conf, "--cni-bin-dir", d.bin)
	return out + errOut, err
}

func expectLine(t *testing.T, out, result, check, detail string) {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == result && f[1] == check && strings.Contains(l, detail) {
			return
		}
	}
	t.Errorf("no %s %s line mentioning %q in:\n%s", result, check, detail, out)
}

func TestDoctor(t *testing.T) {
	t.Run("healthy node", func(t *testing.T) {
		d := newDoctorNode(t)
		out, err := d.doctor(t)
		if err != nil {
			t.Fatalf("doctor: %v\n%s", err, out)
		}
		t.Logf("meshcnictl doctor:\n%s", out)
		expectLine(t, out, "OK", "conflist", "meshcni last of 2 plug-ins (bridge -> meshcni)")
		expectLine(t, out, "OK", "binaries", "holds bridge, meshcni, meshcni-lookup")
		expectLine(t, out, "OK", "kubeconfig", "as system:serviceaccount:kube-system:meshcni-doctor, who may get pods")
		expectLine(t, out, "WARN", "agent", "the agent is not running on this node")
		expectLine(t, out, "OK", "iptables", "backend ")
	})

	for _, tc := range []struct {
		name          string
		break_        func(t *testing.T, d *doctorNode)
		check, detail string
	}{
		{"meshcni not last", func(t *testing.T, d *doctorNode) { d.writeConflist(t, "meshcni", "bridge") },
			"conflist", "meshcni is not the last plug-in"},
		{"meshcni missing", func(t *testing.T, d *doctorNode) { d.writeConflist(t, "bridge") },
			"conflist", "has no meshcni entry: the meshcni-agent installs it"},
		{"no valid config", func(t *testing.T, d *doctorNode) {
			if err := os.WriteFile(filepath.Join(d.conf, "10-net.conflist"), []byte(`{"plugins": [`), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "conflist", "no CNI config yet"},
		{"binary missing", func(t *testing.T, d *doctorNode) { _ = os.Remove(filepath.Join(d.bin, "meshcni")) },
			"binaries", "/meshcni missing"},
		{"lookup helper missing", func(t *testing.T, d *doctorNode) { _ = os.Remove(filepath.Join(d.bin, "meshcni-lookup")) },
			"binaries", "/meshcni-lookup missing"},
		{"token refused", func(t *testing.T, d *doctorNode) {
			if err := kubeharness.WriteKubeconfig(d.kubeconfig, cluster.URL, cluster.CAData, "not-a-token"); err != nil {
				t.Fatal(err)
			}
		}, "kubeconfig", "refused the token"},
		{"identity may not get pods", func(t *testing.T, d *doctorNode) {
			kc, _, err := cluster.ServiceAccountKubeconfig(context.Background(), "kube-system", "meshcni-no-rights", nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			d.kubeconfig = kc
			d.writeConflist(t, "bridge", "meshcni")
		}, "kubeconfig", "meshcni-no-rights, who may not get pods: bind it to ClusterRole meshcni-plugin"},
		{"API server unreachable", func(t *testing.T, d *doctorNode) {
			if err := kubeharness.WriteKubeconfig(d.kubeconfig, "https://127.0.0.1:1", cluster.CAData, "x"); err != nil {
				t.Fatal(err)
			}
		}, "kubeconfig", "cannot reach the API server https://127.0.0.1:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDoctorNode(t)
			tc.break_(t, d)
			out, err := d.doctor(t)
			if !errors.Is(err, node.ErrDoctorFailed) {
				t.Fatalf("doctor: err %v, want a failed check\n%s", err, out)
			}
			expectLine(t, out, "FAIL", tc.check, tc.detail)
		})
	}

	t.Run("invalid file before the primary", func(t *testing.T) {
		d := newDoctorNode(t)
		if err := os.WriteFile(filepath.Join(d.conf, "05-broken.conf"), []byte("{not json"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := d.doctor(t)
		if err != nil {
			t.Fatalf("doctor: %v\n%s", err, out)
		}
		expectLine(t, out, "WARN", "conflist", "05-broken.conf is skipped by the runtime")
	})
}
