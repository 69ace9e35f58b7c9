package plugin

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshcni/meshcni/internal/addstat"
	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/podspec"
)

// Every ADD, whatever its outcome, sends exactly one record, after its
// log lines, and its decision and reason come from the verdict or from
// the step that failed; the log level does not hold it back.
func TestAddSendsOneRecord(t *testing.T) {
	plain := meshPod("shop", "plain", func(p *corev1.Pod) { p.Spec.Containers = p.Spec.Containers[:1] })
	bad := meshPod("shop", "bad", func(p *corev1.Pod) { p.Annotations[capture.AnnotationIncludeInboundPorts] = "http" })
	conf := stdinConf("1.0.0", `,"logLevel":"error"`, false)
	cases := []struct {
		name             string
		args             func() ([]byte, string, string)
		rulesErr         error
		decision, reason string
		wantErr          bool
	}{
		{"captured", func() ([]byte, string, string) { return conf, "shop", "productpage" }, nil, addstat.Captured, podspec.CodeCaptured, false},
		{"excluded", func() ([]byte, string, string) { return conf, "kube-system", "coredns" }, nil, addstat.Skipped, podspec.CodeExcludedNamespace, false},
		{"not kubernetes", func() ([]byte, string, string) { return conf, "", "" }, nil, addstat.Skipped, podspec.CodeNotKubernetes, false},
		{"no sidecar", func() ([]byte, string, string) { return conf, "shop", "plain" }, nil, addstat.Skipped, podspec.CodeNoSidecar, false},
		{"lookup", func() ([]byte, string, string) { return conf, "shop", "gone" }, nil, addstat.Failed, podspec.CodeLookupFailed, true},
		{"bad annotation", func() ([]byte, string, string) { return conf, "shop", "bad" }, nil, addstat.Failed, podspec.CodeInvalidPod, true},
		{"apply", func() ([]byte, string, string) { return conf, "shop", "productpage" }, errors.New("iptables-restore: boom"), addstat.Failed, podspec.CodeApplyFailed, true},
		{"bad config", func() ([]byte, string, string) { return []byte(`{"type":"meshcni"`), "shop", "productpage" }, nil, addstat.Failed, podspec.CodeInvalidInput, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(meshPod("shop", "productpage"), meshPod("kube-system", "coredns"), plain, bad)
			var sock bytes.Buffer
			h.p.ReportTo = &sock
			h.rules.Err = tc.rulesErr
			data, ns, name := tc.args()
			_, err := h.add(t, cmdArgs(ns, name, "uid-"+name, data))
			if (err != nil) != tc.wantErr {
				t.Fatalf("ADD: %v; want error %v", err, tc.wantErr)
			}
			lines := strings.Split(strings.TrimSuffix(sock.String(), "\n"), "\n")
			if len(lines) != 1 {
				t.Fatalf("%d records, want 1: %q", len(lines), sock.String())
			}
			r, ok := addstat.Parse([]byte(lines[0]))
			if !ok {
				t.Fatalf("not a record: %q", lines[0])
			}
			if r.Decision != tc.decision || r.Reason != tc.reason || r.Backend != addstat.NoBackend {
				t.Errorf("record %+v; want decision %s, reason %s, backend none (the Fake programs nothing)", r, tc.decision, tc.reason)
			}
			if r.Seconds <= 0 || r.Seconds > 5 {
				t.Errorf("duration %v s", r.Seconds)
			}
		})
	}
}

// CHECK sends no record: the metrics count ADDs.
func TestCheckSendsNoRecord(t *testing.T) {
	h := newHarness(meshPod("shop", "productpage"))
	var sock bytes.Buffer
	h.p.ReportTo = &sock
	a := cmdArgs("shop", "productpage", "uid-productpage", stdinConf("1.0.0", "", false))
	if _, err := h.add(t, a); err != nil {
		t.Fatal(err)
	}
	sock.Reset()
	if err := h.p.CmdCheck(a); err != nil {
		t.Fatal(err)
	}
	if sock.Len() != 0 {
		t.Errorf("CHECK sent %q", sock.String())
	}
}
