package cluster

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/meshcni/meshcni/internal/agent"
	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
	"github.com/meshcni/meshcni/internal/netfilter"
)

const deployPath = "../../../deploy/meshcni.yaml"

func render(t *testing.T, s ChartValues) *chart.Manifest {
	t.Helper()
	v, err := s.Values()
	if err != nil {
		t.Fatal(err)
	}
	m, err := Render(v)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// The committed plain manifests are a fresh render (golden; REFRESH_GOLDEN=true
// or `make manifests` rewrites them).
func TestDeployManifestsUpToDate(t *testing.T) {
	out, err := chart.Template(nil, chart.Release, DefaultNamespace)
	if err != nil {
		t.Fatal(err)
	}
	got := []byte(out)
	if os.Getenv("REFRESH_GOLDEN") == "true" {
		if err := os.WriteFile(deployPath, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(deployPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: run `make manifests` (or REFRESH_GOLDEN=true go test ./internal/ctl)", deployPath)
	}
}

// decodeAll decodes every object with client-go's scheme, strictly typed.
func decodeAll(t *testing.T, m *chart.Manifest) []runtime.Object {
	t.Helper()
	var out []runtime.Object
	for _, u := range m.Objects {
		js, err := json.Marshal(u.Object)
		if err != nil {
			t.Fatal(err)
		}
		obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode(js, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", cmdutil.Ref(u), err)
		}
		if gvk.Kind != u.GetKind() {
			t.Fatalf("%s decoded as %s", cmdutil.Ref(u), gvk)
		}
		// Strict: no field the typed struct drops.
		back, err := json.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		var a, b map[string]any
		_ = json.Unmarshal(js, &a)
		_ = json.Unmarshal(back, &b)
		if missing := lostFields(a, b, ""); len(missing) > 0 {
			t.Errorf("%s: fields unknown to the API types: %v", cmdutil.Ref(u), missing)
		}
		out = append(out, obj)
	}
	return out
}

// lostFields lists keys of a absent from b (recursively).
func lostFields(a, b map[string]any, prefix string) []string {
	var out []string
	for k, va := range a {
		vb, ok := b[k]
		if !ok {
			out = append(out, prefix+k)
			continue
		}
		if ma, ok := va.(map[string]any); ok {
			mb, _ := vb.(map[string]any)
			out = append(out, lostFields(ma, mb, prefix+k+".")...)
		}
		if la, ok := va.([]any); ok {
			lb, _ := vb.([]any)
			for i := range la {
				ma, _ := la[i].(map[string]any)
				if i < len(lb) {
					mb, _ := lb[i].(map[string]any)
					out = append(out, lostFields(ma, mb, prefix+k+"[].")...)
				}
			}
		}
	}
	return out
}

func daemonSet(t *testing.T, objs []runtime.Object) *appsv1.DaemonSet {
	t.Helper()
	for _, o := range objs {
		if ds, ok := o.(*appsv1.DaemonSet); ok {
			return ds
		}
	}
	t.Fatal("no DaemonSet rendered")
	return nil
}

func TestObjectsDecodeAndShape(t *testing.T) {
	for _, tc := range []struct {
		platform, bin, conf string
		privileged, quota   bool
	}{
		{"", "/opt/cni/bin", "/etc/cni/net.d", false, false},
		{"gke", "/home/kubernetes/bin", "/etc/cni/net.d", false, true},
		{"k3s", "/var/lib/rancher/k3s/data/current/bin", "/var/lib/rancher/k3s/agent/etc/cni/net.d", false, false},
		{"openshift", "/var/lib/cni/bin", "/etc/kubernetes/cni/net.d", true, false},
	} {
		t.Run("platform="+tc.platform, func(t *testing.T) {
			m := render(t, ChartValues{Platform: tc.platform})
			objs := decodeAll(t, m)
			var kinds []string
			for _, u := range m.Objects {
				kinds = append(kinds, u.GetKind())
				if u.GetKind() != "Namespace" && !strings.HasPrefix(u.GetKind(), "Cluster") && !strings.HasPrefix(u.GetKind(), "ValidatingAdmissionPolicy") && u.GetKind() != "MutatingWebhookConfiguration" && u.GetNamespace() != DefaultNamespace {
					t.Errorf("%s: namespace %q, want %q", cmdutil.Ref(u), u.GetNamespace(), DefaultNamespace)
				}
			}
			if kinds[0] != "Namespace" || kinds[len(kinds)-1] != "DaemonSet" {
				t.Errorf("apply order %v: want the Namespace first and the DaemonSet last", kinds)
			}
			if got := slices.Contains(kinds, "ResourceQuota"); got != tc.quota {
				t.Errorf("ResourceQuota rendered: %v, want %v", got, tc.quota)
			}
			ds := daemonSet(t, objs)
			spec := ds.Spec.Template.Spec
			hostPaths := map[string]string{}
			for _, v := range spec.Volumes {
				if v.HostPath != nil {
					hostPaths[v.Name] = v.HostPath.Path
				}
			}
			if hostPaths["cni-bin-dir"] != tc.bin || hostPaths["cni-conf-dir"] != tc.conf || hostPaths["run-dir"] != "/var/run/meshcni" {
				t.Errorf("host paths %v: want bin %s, conf %s", hostPaths, tc.bin, tc.conf)
			}
			c := spec.Containers[0]
			if got := c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged; got != tc.privileged {
				t.Errorf("privileged %v, want %v", got, tc.privileged)
			}
			if !tc.privileged {
				if caps := c.SecurityContext.Capabilities; caps == nil || !slices.Equal(caps.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE", "SYS_CHROOT"}) || !slices.Equal(caps.Drop, []corev1.Capability{"ALL"}) {
					t.Errorf("capabilities %+v: want ALL dropped, NET_ADMIN, NET_RAW (iptables-legacy), SYS_ADMIN (setns), SYS_PTRACE (/proc/1/root) and SYS_CHROOT added", caps)
				}
			}
			if sp := c.SecurityContext.SeccompProfile; sp == nil || sp.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("seccompProfile %+v: want RuntimeDefault", sp)
			}
			// The run dir holds files the conflist names by node path.
			for _, vm := range c.VolumeMounts {
				if vm.Name == "run-dir" && vm.MountPath != hostPaths["run-dir"] {
					t.Errorf("run dir mounted at %s, must be its node path %s", vm.MountPath, hostPaths["run-dir"])
				}
			}
			if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" {
				t.Errorf("hostNetwork %v, priorityClassName %q", spec.HostNetwork, spec.PriorityClassName)
			}
			if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
				t.Errorf("tolerations %+v: want one that tolerates every taint", spec.Tolerations)
			}
			if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
				t.Errorf("readiness probe %+v: want GET /readyz", p)
			}
			if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
				t.Errorf("update strategy %s", ds.Spec.UpdateStrategy.Type)
			}
			if ds.Spec.Template.Annotations[ConfigHashAnnotation] == "" {
				t.Error("no settings hash on the pod template")
			}
		})
	}
}

func TestConfigHashFollowsSettingsOnly(t *testing.T) {
	hash := func(s ChartValues) string {
		return daemonSet(t, decodeAll(t, render(t, s))).Spec.Template.Annotations[ConfigHashAnnotation]
	}
	base := hash(ChartValues{})
	if hash(ChartValues{ExcludeNamespaces: []string{"kube-system"}}) == base {
		t.Error("changing the excluded namespaces kept the hash: the agents would not roll")
	}
	if hash(ChartValues{Set: []string{"pluginLogLevel=debug"}}) == base {
		t.Error("changing a plug-in setting kept the hash")
	}
	if hash(ChartValues{Image: "example.test/agent:v2"}) != base {
		t.Error("the image changed the settings hash")
	}
}

func TestExcludedNamespaces(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{nil, "kube-system,istio-system,meshcni-system"},
		{[]string{}, "meshcni-system"},
		{[]string{"a", "meshcni-system", "b", "a"}, "a,b,meshcni-system"},
	} {
		var cm *corev1.ConfigMap
		for _, o := range decodeAll(t, render(t, ChartValues{ExcludeNamespaces: tc.in})) {
			if c, ok := o.(*corev1.ConfigMap); ok {
				cm = c
			}
		}
		if got := cm.Data["MESHCNI_EXCLUDE_NAMESPACES"]; got != tc.want {
			t.Errorf("--exclude-namespaces %q: ConfigMap says %q, want %q", tc.in, got, tc.want)
		}
	}
}

// The plug-in's identity may get pods and nothing else; the agent gets only
// what it uses.
func TestRBACIsLeast(t *testing.T) {
	roles := map[string][]rbacv1.PolicyRule{}
	for _, o := range decodeAll(t, render(t, ChartValues{})) {
		if r, ok := o.(*rbacv1.ClusterRole); ok {
			roles[r.Name] = r.Rules
		}
	}
	if got := roles["meshcni-plugin"]; len(got) != 1 || !slices.Equal(got[0].Verbs, []string{"get"}) || !slices.Equal(got[0].Resources, []string{"pods"}) || !slices.Equal(got[0].APIGroups, []string{""}) {
		t.Errorf("meshcni-plugin rules %+v: want get pods only", got)
	}
	for _, r := range roles["meshcni-agent"] {
		for _, v := range r.Verbs {
			if v == "*" || slices.Contains(r.Resources, "*") || slices.Contains(r.Resources, "secrets") {
				t.Errorf("meshcni-agent rule %+v is too broad", r)
			}
		}
	}
}

func TestRenderErrorsSayWhatToDo(t *testing.T) {
	for _, tc := range []struct {
		s    ChartValues
		want string
	}{
		{ChartValues{Set: []string{"platform=nope"}}, "/platform"},
		{ChartValues{Set: []string{"oops"}}, "use key=value"},
		{ChartValues{Image: "repo@sha256:abc"}, "@sha256: and 64 hex digits"},
		{ChartValues{Set: []string{"excludeNamespaces={Bad_NS}"}}, "excludeNamespaces"},
	} {
		v, err := tc.s.Values()
		if err == nil {
			_, err = Render(v)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want it to mention %q", tc.s, err, tc.want)
		}
	}
}

// The chart takes every backend the agent and the plug-in take (the
// schema once refused nftables), and nothing else.
func TestChartTakesEveryBackend(t *testing.T) {
	for _, b := range []netfilter.Backend{netfilter.Auto, "auto", netfilter.Legacy, netfilter.NFT, netfilter.Nftables} {
		objs := decodeAll(t, render(t, ChartValues{Set: []string{"iptablesBackend=" + string(b)}}))
		var got string
		for _, o := range objs {
			if cm, ok := o.(*corev1.ConfigMap); ok {
				got = cm.Data["MESHCNI_IPTABLES_BACKEND"]
			}
		}
		if got != string(b) {
			t.Errorf("iptablesBackend=%q renders MESHCNI_IPTABLES_BACKEND %q", b, got)
		}
		o := agent.DefaultOptions()
		o.IptablesBackend = got
		if err := o.Validate(); err != nil {
			t.Errorf("the agent refuses the chart's iptablesBackend %q: %v", got, err)
		}
	}
	v, err := (&ChartValues{Set: []string{"iptablesBackend=ebpf"}}).Values()
	if err == nil {
		_, err = Render(v)
	}
	if err == nil || !strings.Contains(err.Error(), "iptablesBackend") {
		t.Errorf("iptablesBackend=ebpf: %v, want it refused", err)
	}
}

// helm lint passes on the chart directory, as `helm lint charts/meshcni`.
func TestChartLints(t *testing.T) {
	kv, err := chartutil.ParseKubeVersion("v1.34.4")
	if err != nil {
		t.Fatal(err)
	}
	for _, nodeSide := range []bool{false, true} { // the Helm release; the controller's render
		for _, platform := range Platforms {
			res := lint.AllWithKubeVersion("../../../charts/meshcni", map[string]any{"platform": platform, "nodeSide": nodeSide}, DefaultNamespace, kv)
			for _, msg := range res.Messages {
				if msg.Severity >= support.WarningSev {
					t.Errorf("nodeSide %v, platform %s: lint: %s", nodeSide, platform, msg)
				} else {
					t.Logf("nodeSide %v, platform %s: lint: %s", nodeSide, platform, msg)
				}
			}
		}
	}
}

// The DaemonSet speaks the agent's language: every arg is one of its flags
// and every ConfigMap key one of its environment variables.
func TestDaemonSetMatchesAgentFlags(t *testing.T) {
	objs := decodeAll(t, render(t, ChartValues{}))
	ds := daemonSet(t, objs)
	cmd := agent.NewCommand(io.Discard)
	if err := cmd.Flags().Parse(ds.Spec.Template.Spec.Containers[0].Args); err != nil {
		t.Fatalf("meshcni-agent rejects the DaemonSet's args: %v", err)
	}
	var usage strings.Builder
	cmd.Flags().VisitAll(func(f *pflag.Flag) { usage.WriteString(f.Usage + "\n") })
	env := map[string]bool{}
	for _, e := range ds.Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = true
	}
	if !env["NODE_NAME"] {
		t.Error("no NODE_NAME: the agent's repair controller and taint removal stay off")
	}
	for _, o := range objs {
		cm, ok := o.(*corev1.ConfigMap)
		if !ok {
			continue
		}
		for k := range cm.Data {
			if !strings.Contains(usage.String(), "[$"+k+"]") {
				t.Errorf("ConfigMap key %s is no meshcni-agent environment variable", k)
			}
		}
	}
}
