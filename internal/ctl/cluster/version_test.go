package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/internal/buildinfo"
)

func TestImageVersion(t *testing.T) {
	for image, want := range map[string]string{
		"ghcr.io/meshcni/meshcni-agent:0.1.0":                 "0.1.0",
		"localhost:5000/meshcni-agent:v2":                     "v2",
		"localhost:5000/meshcni-agent":                        "latest",
		"meshcni-agent":                                       "latest",
		"ghcr.io/meshcni/meshcni-agent:0.1.0@sha256:" + hex64: "sha256:" + hex64,
		"ghcr.io/meshcni/meshcni-agent@sha256:" + hex64:       "sha256:" + hex64,
	} {
		if got := imageVersion(image); got != want {
			t.Errorf("imageVersion(%s) = %s, want %s", image, got, want)
		}
	}
}

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestComponents(t *testing.T) {
	pod := func(containers ...corev1.Container) corev1.Pod {
		return corev1.Pod{Spec: corev1.PodSpec{Containers: containers}}
	}
	c := func(name, image string) corev1.Container { return corev1.Container{Name: name, Image: image} }
	pods := []corev1.Pod{
		pod(c("meshcni-agent", "r/a:2")),
		pod(c("istio-proxy", "istio/proxyv2:1.28"), c("meshcni-agent", "r/a:1")), // the named one, not the first
		pod(c("meshcni-agent", "r/a:2")),
		pod(c("other", "r/b:9")), // no container of that name: the first
		pod(),                    // none at all: skipped
	}
	want := []Component{{Image: "r/a:2", Version: "2", Pods: 2}, {Image: "r/a:1", Version: "1", Pods: 1}, {Image: "r/b:9", Version: "9", Pods: 1}}
	if d := cmp.Diff(want, components(pods, "meshcni-agent")); d != "" {
		t.Errorf("components (-want +got):\n%s", d)
	}
}

func TestClientVersion(t *testing.T) {
	info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"},
	}}
	got := clientVersion(info, true)
	if got.Version != "(devel)" || got.GitCommit != "abc123-dirty" || got.GoVersion != "go1.26.8" {
		t.Errorf("from build info: %+v", got)
	}
	defer func(v string) { buildinfo.Version = v }(buildinfo.Version)
	buildinfo.Version = "v0.2.0"
	if got := clientVersion(info, true); got.Version != "v0.2.0" || got.GitCommit != "abc123-dirty" {
		t.Errorf("with -X ...buildinfo.Version=v0.2.0: %+v", got)
	}
	buildinfo.Version = ""
	if got := clientVersion(nil, false); got.Version != "unknown" || got.GoVersion == "" || got.Platform == "" {
		t.Errorf("without build info: %+v", got)
	}
}

func TestVersionClientOnlyOutputs(t *testing.T) {
	run := func(args ...string) (string, string, error) {
		var out, errb bytes.Buffer
		cmd := NewCmdVersion(genericclioptions.NewConfigFlags(true), genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errb})
		cmd.SetArgs(args)
		err := cmd.ExecuteContext(context.Background())
		return out.String(), errb.String(), err
	}
	out, _, err := run("--client", "-o", "json")
	var info VersionInfo
	if err != nil || json.Unmarshal([]byte(out), &info) != nil || info.Client.Version == "" || info.Client.GoVersion == "" {
		t.Fatalf("-o json: %v %q", err, out)
	}
	if info.Controller != nil || info.Agents != nil || info.Cluster != "" {
		t.Errorf("--client asked the cluster: %+v", info)
	}
	out, _, err = run("--client", "-o", "yaml")
	var fromYAML VersionInfo
	if err != nil || yaml.Unmarshal([]byte(out), &fromYAML) != nil || fromYAML.Client != info.Client {
		t.Fatalf("-o yaml: %v %q", err, out)
	}
	out, _, err = run("--client")
	if err != nil || !strings.HasPrefix(out, "COMPONENT") || !strings.Contains(out, "meshcnictl") {
		t.Fatalf("table: %v %q", err, out)
	}
	if _, _, err := run("-o", "xml"); err == nil || !strings.Contains(err.Error(), "json or yaml") {
		t.Errorf("-o xml: %v", err)
	}
}
