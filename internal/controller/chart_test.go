package controller

import (
	"io"
	"net"
	"slices"
	"strconv"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/meshcni/meshcni/internal/chart"
)

// The chart runs the command as it parses its flags: the Deployment's
// args (parsed by the real flag set) name the ports, the Service, the
// Secret and the webhook configuration that the chart's other objects and
// RBAC name. A renamed flag or port fails here, not in a cluster.
func TestChartMatchesTheCommand(t *testing.T) {
	m, err := chart.Render(nil, "meshcni-system", "test")
	if err != nil {
		t.Fatal(err)
	}
	var (
		dep   appsv1.Deployment
		svc   corev1.Service
		mwc   admissionregistrationv1.MutatingWebhookConfiguration
		roles []rbacv1.PolicyRule
	)
	decode := func(i int, into any) {
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m.Objects[i].Object, into); err != nil {
			t.Fatal(err)
		}
	}
	for i, o := range m.Objects {
		switch {
		case o.GetKind() == "Deployment" && o.GetName() == "meshcni-controller":
			decode(i, &dep)
		case o.GetKind() == "Service" && o.GetName() == "meshcni-controller":
			decode(i, &svc)
		case o.GetKind() == "MutatingWebhookConfiguration":
			decode(i, &mwc)
		case (o.GetKind() == "Role" || o.GetKind() == "ClusterRole") && o.GetName() == "meshcni-controller":
			var r rbacv1.ClusterRole
			decode(i, &r)
			roles = append(roles, r.Rules...)
		case o.GetKind() == "Deployment":
			t.Errorf("the controller's release has another Deployment: %s", o.GetName())
		}
	}
	if len(dep.Spec.Template.Spec.Containers) != 1 || svc.Name == "" || len(mwc.Webhooks) != 1 {
		t.Fatalf("deployment %q, service %q, webhooks %d", dep.Name, svc.Name, len(mwc.Webhooks))
	}
	c := dep.Spec.Template.Spec.Containers[0]
	cmd := NewCommand(io.Discard)
	if err := cmd.ParseFlags(c.Args); err != nil {
		t.Fatalf("the chart's args %q: %v", c.Args, err)
	}
	flag := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for name, f := range map[string]string{"health": "health-addr", "webhook": "webhook-addr", "console": "console-addr"} {
		_, port, err := net.SplitHostPort(flag(f))
		if err != nil || port != strconv.Itoa(int(ports[name])) {
			t.Errorf("--%s %q, container port %s %d", f, flag(f), name, ports[name])
		}
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.String() != "health" {
		t.Errorf("readiness probe %+v", c.ReadinessProbe)
	}
	svcPorts := map[string]corev1.ServicePort{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Name] = p
	}
	for _, name := range []string{"webhook", "console"} {
		if p, ok := svcPorts[name]; !ok || p.TargetPort.String() != name {
			t.Errorf("Service port %s: %+v", name, p)
		}
	}
	for k, v := range svc.Spec.Selector {
		if dep.Spec.Template.Labels[k] != v {
			t.Errorf("the Service selects %s=%s, the pods have %q", k, v, dep.Spec.Template.Labels[k])
		}
	}
	ref := mwc.Webhooks[0].ClientConfig.Service
	if ref == nil || ref.Name != flag("service") || ref.Name != svc.Name || ref.Port == nil || *ref.Port != svcPorts["webhook"].Port || ref.Path == nil || *ref.Path != "/mutate" {
		t.Errorf("the webhook calls %+v; --service %s", ref, flag("service"))
	}
	if mwc.Name != flag("webhook-configuration") {
		t.Errorf("webhook configuration %s, --webhook-configuration %s", mwc.Name, flag("webhook-configuration"))
	}
	if fp := mwc.Webhooks[0].FailurePolicy; fp == nil || *fp != admissionregistrationv1.Ignore {
		t.Errorf("failurePolicy %v, want Ignore", fp)
	}
	named := func(resource, name string, verbs ...string) bool {
		return slices.ContainsFunc(roles, func(r rbacv1.PolicyRule) bool {
			return slices.Contains(r.Resources, resource) && slices.Contains(r.ResourceNames, name) &&
				!slices.ContainsFunc(verbs, func(v string) bool { return !slices.Contains(r.Verbs, v) })
		})
	}
	if !named("secrets", flag("secret"), "get", "list", "watch", "update") {
		t.Errorf("no rule on the Secret %s", flag("secret"))
	}
	if !named("mutatingwebhookconfigurations", flag("webhook-configuration"), "get", "list", "watch", "patch") {
		t.Errorf("no rule on the webhook configuration %s", flag("webhook-configuration"))
	}
}
