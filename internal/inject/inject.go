// Package inject converts Istio's injected pods between its two modes,
// so that an unchanged Istio works with meshcni: in a namespace meshcni
// captures, Istio's rule-programming istio-init (NET_ADMIN, NET_RAW,
// root) becomes the istio-validation container Istio itself injects in
// CNI mode, and the settings istio-init's istio-iptables arguments
// carried become the annotations Istio's CNI-mode template writes; in a
// namespace meshcni excludes, istio-validation becomes istio-init again,
// because there nothing else programs the pod's rules.
//
// It is pure (no I/O): the admission webhook and meshcnictl mutate share
// it, so what a user pre-renders is what the webhook does.
package inject

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/initcmd"
	"github.com/meshcni/meshcni/internal/podspec"
)

// The names Istio's injection template uses, and meshcni's records.
const (
	InitName       = "istio-init"
	ValidationName = "istio-validation"
	istioStatus    = "sidecar.istio.io/status"

	// AnnotationMutated names what the webhook did to the pod.
	AnnotationMutated = "meshcni.io/mutated"
	// AnnotationNotMutated says why an Istio pod that looked convertible
	// was left with its istio-init (which then programs its own rules).
	AnnotationNotMutated = "meshcni.io/not-mutated"

	// ToValidation and ToInit are AnnotationMutated's values.
	ToValidation = "istio-init-to-istio-validation"
	ToInit       = "istio-validation-to-istio-init"

	runValidation = "--run-validation"
	skipRuleApply = "--skip-rule-apply"
	forceApply    = "--force-apply"
)

// Record is what Template did: the init container it replaced (Index,
// with its new value) and the annotations it set, in the order set.
// A zero Record (Action "") means the pod is left alone.
type Record struct {
	Action string
	// Index is the replaced init container's position; -1 for none.
	Index     int
	Container corev1.Container
	// Annotations lists the annotations written, key and value; only
	// those whose value changes.
	Annotations [][2]string
}

// Changed reports whether the pod is mutated at all.
func (r Record) Changed() bool { return r.Index >= 0 || len(r.Annotations) > 0 }

// Template decides and applies the conversion on a pod's metadata and
// spec (a Pod's, or a workload's pod template), in namespace ns. It
// never modifies its arguments: the mutated copies are returned.
func Template(meta metav1.ObjectMeta, spec corev1.PodSpec, ns string, excluded []string) (metav1.ObjectMeta, corev1.PodSpec, Record) {
	rec := Record{Index: -1}
	if strings.EqualFold(meta.Annotations[capture.AnnotationInject], "false") {
		return meta, spec, rec
	}
	if slices.Contains(excluded, ns) {
		i := indexOf(spec.InitContainers, ValidationName)
		if i < 0 || !isValidation(spec.InitContainers[i].Args) {
			return meta, spec, rec
		}
		return apply(meta, spec, ToInit, i, toInit(spec.InitContainers[i]), nil)
	}
	i := indexOf(spec.InitContainers, InitName)
	if i < 0 || len(spec.InitContainers[i].Args) == 0 || spec.InitContainers[i].Args[0] != "istio-iptables" {
		return meta, spec, rec
	}
	c, notes, sw, err := toValidation(meta, spec, i)
	if err != nil {
		return apply(meta, spec, "", -1, corev1.Container{}, [][2]string{{AnnotationNotMutated, err.Error()}})
	}
	m2, s2, r2 := apply(meta, spec, ToValidation, i, c, notes)
	// Fail closed: the converted pod must be one the plug-in captures,
	// with annotations it accepts; otherwise istio-init stays and
	// programs the rules itself.
	if err := pluginAccepts(m2, s2, sw); err != nil {
		return apply(meta, spec, "", -1, corev1.Container{}, [][2]string{{AnnotationNotMutated, err.Error()}})
	}
	return m2, s2, r2
}

// apply writes the container and annotations into copies of meta and
// spec, recording only what changes.
func apply(meta metav1.ObjectMeta, spec corev1.PodSpec, action string, i int, c corev1.Container, notes [][2]string) (metav1.ObjectMeta, corev1.PodSpec, Record) {
	rec := Record{Action: action, Index: -1}
	meta = *meta.DeepCopy()
	spec = *spec.DeepCopy()
	if i >= 0 {
		spec.InitContainers[i] = c
		rec.Index, rec.Container = i, c
		if st, ok := meta.Annotations[istioStatus]; ok {
			from, to := InitName, ValidationName
			if action == ToInit {
				from, to = ValidationName, InitName
			}
			notes = append(notes, [2]string{istioStatus, renameInStatus(st, from, to)})
		}
		notes = append(notes, [2]string{AnnotationMutated, action})
	}
	for _, kv := range notes {
		if old, ok := meta.Annotations[kv[0]]; ok && old == kv[1] {
			continue
		}
		if meta.Annotations == nil {
			meta.Annotations = map[string]string{}
		}
		meta.Annotations[kv[0]] = kv[1]
		rec.Annotations = append(rec.Annotations, kv)
	}
	return meta, spec, rec
}

func indexOf(cs []corev1.Container, name string) int {
	for i := range cs {
		if cs[i].Name == name {
			return i
		}
	}
	return -1
}

func isValidation(args []string) bool {
	return len(args) > 0 && args[0] == "istio-iptables" &&
		slices.Contains(args, runValidation) && slices.Contains(args, skipRuleApply)
}

// toInit gives back the rule-programming istio-init of Istio's default
// template: the same istio-iptables arguments without the validation
// flags, NET_ADMIN and NET_RAW, root, writable root filesystem.
func toInit(v corev1.Container) corev1.Container {
	c := *v.DeepCopy()
	c.Name = InitName
	c.Args = slices.DeleteFunc(c.Args, func(a string) bool { return a == runValidation || a == skipRuleApply })
	if c.SecurityContext == nil {
		c.SecurityContext = &corev1.SecurityContext{}
	}
	sc := c.SecurityContext
	if sc.Capabilities == nil {
		sc.Capabilities = &corev1.Capabilities{}
	}
	for _, cp := range []corev1.Capability{"NET_ADMIN", "NET_RAW"} {
		if !slices.Contains(sc.Capabilities.Add, cp) {
			sc.Capabilities.Add = append(sc.Capabilities.Add, cp)
		}
	}
	sc.ReadOnlyRootFilesystem = ptr(false)
	sc.RunAsGroup = ptr(int64(0))
	sc.RunAsNonRoot = ptr(false)
	sc.RunAsUser = ptr(int64(0))
	return c
}

// toValidation turns istio-init (spec.InitContainers[i]) into Istio's
// CNI-mode istio-validation, and returns the annotations its arguments
// become. Settings that no annotation can carry are an error: the pod is
// then left as it is, never converted with a different redirection.
func toValidation(meta metav1.ObjectMeta, spec corev1.PodSpec, i int) (corev1.Container, [][2]string, switches, error) {
	init := spec.InitContainers[i]
	a, err := initcmd.ParseArgs(init.Args[1:], envLookup(init.Env))
	if err != nil {
		return corev1.Container{}, nil, switches{}, fmt.Errorf("istio-init arguments: %v", err)
	}
	if a.RunValidation || a.SkipRuleApply {
		return corev1.Container{}, nil, switches{}, fmt.Errorf("istio-init already runs with %s or %s", runValidation, skipRuleApply)
	}
	// Values the plug-in takes from its node configuration, or the
	// sidecar, not from annotations (as Istio's CNI plug-in does): a
	// pod that asks for others keeps istio-init.
	for _, f := range []struct{ name, got, want string }{
		{"-p (envoy-port)", a.ProxyPort, "15001"},
		{"-z (inbound-capture-port)", a.InboundCapturePort, "15006"},
		{"-e (inbound-tunnel-port)", a.InboundTunnelPort, "15008"},
		{"-t (istio-inbound-tproxy-mark)", a.TProxyMark, "1337"},
		{"-r (istio-inbound-tproxy-route-table)", a.TProxyTable, "133"},
	} {
		if f.got != f.want {
			return corev1.Container{}, nil, switches{}, fmt.Errorf("istio-init sets %s %q; meshcni takes it from the node's configuration (%s), so the pod keeps istio-init", f.name, f.got, f.want)
		}
	}
	for _, f := range []string{"proxy-gid", "capture-all-dns", "network-namespace", "dry-run"} {
		if a.Set[f] {
			return corev1.Container{}, nil, switches{}, fmt.Errorf("istio-init sets --%s, which no annotation carries, so the pod keeps istio-init", f)
		}
	}
	uid, err := strconv.ParseInt(a.ProxyUID, 10, 64)
	if err != nil || uid <= 0 {
		return corev1.Container{}, nil, switches{}, fmt.Errorf("istio-init's -u %q is not one non-root UID, so the pod keeps istio-init", a.ProxyUID)
	}
	mode := a.Mode
	if mode == "" {
		mode = string(capture.Redirect)
	}
	gid := int64(capture.DefaultProxyUID)
	if mode != string(capture.TProxy) {
		if g := proxyGID(spec); g != nil {
			gid = *g
		}
	}

	c := *init.DeepCopy()
	c.Name = ValidationName
	c.Args = append(slices.DeleteFunc(c.Args, func(s string) bool { return s == forceApply }), runValidation, skipRuleApply)
	if c.SecurityContext == nil {
		c.SecurityContext = &corev1.SecurityContext{}
	}
	sc := c.SecurityContext
	if sc.Capabilities == nil {
		sc.Capabilities = &corev1.Capabilities{}
	}
	sc.Capabilities.Add = nil // the validation needs none
	if !slices.Contains(sc.Capabilities.Drop, "ALL") {
		sc.Capabilities.Drop = append(sc.Capabilities.Drop, "ALL")
	}
	sc.Privileged = ptr(false)
	sc.AllowPrivilegeEscalation = ptr(false)
	sc.ReadOnlyRootFilesystem = ptr(true)
	sc.RunAsGroup = ptr(gid)
	sc.RunAsNonRoot = ptr(true)
	sc.RunAsUser = ptr(uid)

	return c, annotationsFrom(a, mode, meta), switches{a.RedirectDNS, a.DropInvalid, a.DualStack}, nil
}

// switches are istio-init's settings that the plug-in reads from the
// sidecar's environment instead (as Istio's CNI plug-in does).
type switches struct{ redirectDNS, dropInvalid, dualStack bool }

// annotationsFrom writes istio-init's settings as Istio's CNI-mode
// template writes them (its "annotations" block), in that order.
func annotationsFrom(a initcmd.Args, mode string, meta metav1.ObjectMeta) [][2]string {
	var out [][2]string
	set := func(k, v string) { out = append(out, [2]string{k, v}) }
	set(capture.AnnotationInterceptionMode, mode)
	// Istio omits an empty include list (the plug-in then captures
	// everything); istio-init with -i "" captured nothing outbound, and
	// that is what the pod keeps.
	set(capture.AnnotationIncludeOutboundCIDRs, a.ServiceCIDR)
	if a.ExcludeCIDR != "" {
		set(capture.AnnotationExcludeOutboundCIDRs, a.ExcludeCIDR)
	}
	set(capture.AnnotationIncludeInboundPorts, a.InboundPorts)
	set(capture.AnnotationExcludeInboundPorts, userExcludes(a.ExcludeInboundPorts))
	if a.OutboundPorts != "" {
		set(capture.AnnotationIncludeOutboundPorts, a.OutboundPorts)
	}
	if a.ExcludeOutboundPorts != "" {
		set(capture.AnnotationExcludeOutboundPorts, a.ExcludeOutboundPorts)
	}
	// The template copies these from the pod's own annotations, which
	// istio-init's -k and -c came from; a value only in the arguments
	// goes to the current name.
	if a.KubevirtInterfaces != "" {
		key := capture.AnnotationRerouteInterfaces
		if _, ok := meta.Annotations[key]; !ok {
			if _, old := meta.Annotations[capture.AnnotationKubevirtInterfaces]; old {
				key = capture.AnnotationKubevirtInterfaces
			}
		}
		set(key, a.KubevirtInterfaces)
	}
	if a.ExcludeInterfaces != "" {
		set(capture.AnnotationExcludeInterfaces, a.ExcludeInterfaces)
	}
	return out
}

// userExcludes strips the "15090,15021" the template puts before the
// excluded inbound ports (the plug-in always excludes both).
func userExcludes(d string) string {
	if d == "15090,15021" {
		return ""
	}
	return strings.TrimPrefix(d, "15090,15021,")
}

func envLookup(env []corev1.EnvVar) func(string) (string, bool) {
	return func(name string) (string, bool) {
		for _, e := range env {
			if e.Name == name && e.ValueFrom == nil {
				return e.Value, true
			}
		}
		return "", false
	}
}

func proxyGID(spec corev1.PodSpec) *int64 {
	var gid *int64
	if spec.SecurityContext != nil {
		gid = spec.SecurityContext.RunAsGroup
	}
	if c := proxy(spec); c != nil && c.SecurityContext != nil && c.SecurityContext.RunAsGroup != nil {
		gid = c.SecurityContext.RunAsGroup
	}
	return gid
}

func proxy(spec corev1.PodSpec) *corev1.Container {
	if i := indexOf(spec.Containers, "istio-proxy"); i >= 0 {
		return &spec.Containers[i]
	}
	if i := indexOf(spec.InitContainers, "istio-proxy"); i >= 0 {
		return &spec.InitContainers[i]
	}
	return nil
}

// pluginAccepts judges the converted pod with the plug-in's own code,
// and holds istio-init's switches to what the plug-in reads from the
// sidecar's environment.
func pluginAccepts(meta metav1.ObjectMeta, spec corev1.PodSpec, sw switches) error {
	p := judged(meta, spec)
	proxy := podspec.ProxyOf(p)
	if sw != (switches{proxy.Flag(capture.EnvDNSCapture), proxy.Flag(capture.EnvInvalidDrop), proxy.Flag(capture.EnvDualStack)}) {
		return fmt.Errorf("istio-init's DNS capture, invalid-drop or dual-stack switches differ from what meshcni reads from istio-proxy's environment (%s, %s, %s), so the pod keeps istio-init",
			capture.EnvDNSCapture, capture.EnvInvalidDrop, capture.EnvDualStack)
	}
	// The namespace is a captured one (the caller decided); no addresses
	// yet, so IPv4 alone, which does not change what is accepted.
	v, err := podspec.NewJudge(capture.Default(), nil).Pod(p, nil)
	if err != nil {
		return fmt.Errorf("meshcni would reject the converted pod (%v), so it keeps istio-init", err)
	}
	if !v.Capture {
		return fmt.Errorf("meshcni would not capture the converted pod (%s), so it keeps istio-init", v.Reason)
	}
	return nil
}

// judged is the plug-in's view of the pod: what podspec.Of gives (its
// JSON round trip), copied field by field because encoding and decoding
// the whole pod cost a quarter of a webhook review's CPU. The tests hold
// it equal to podspec.Of on every fixture, and to podspec's field list.
func judged(meta metav1.ObjectMeta, spec corev1.PodSpec) *podspec.Pod {
	p := &podspec.Pod{ObjectMeta: podspec.ObjectMeta{Name: meta.Name, Namespace: meta.Namespace, UID: string(meta.UID)}}
	if len(meta.Annotations) > 0 {
		p.Annotations = meta.Annotations
	}
	if sc := spec.SecurityContext; sc != nil {
		p.Spec.SecurityContext = &podspec.SecurityContext{RunAsUser: sc.RunAsUser, RunAsGroup: sc.RunAsGroup}
	}
	p.Spec.Containers = judgedContainers(spec.Containers)
	if len(spec.InitContainers) > 0 {
		p.Spec.InitContainers = judgedContainers(spec.InitContainers)
	}
	return p
}

func judgedContainers(cs []corev1.Container) []podspec.Container {
	if cs == nil {
		return nil
	}
	out := make([]podspec.Container, len(cs))
	for i, c := range cs {
		o := &out[i]
		o.Name = c.Name
		if c.RestartPolicy != nil {
			o.RestartPolicy = string(*c.RestartPolicy)
		}
		if sc := c.SecurityContext; sc != nil {
			o.SecurityContext = &podspec.SecurityContext{RunAsUser: sc.RunAsUser, RunAsGroup: sc.RunAsGroup}
		}
		if len(c.Env) > 0 {
			o.Env = make([]podspec.EnvVar, len(c.Env))
			for j, e := range c.Env {
				o.Env[j] = podspec.EnvVar{Name: e.Name, Value: e.Value}
			}
		}
	}
	return out
}

// renameInStatus renames the init container in Istio's status annotation
// (JSON), touching nothing else in it.
func renameInStatus(st, from, to string) string {
	const key = `"initContainers":[`
	i := strings.Index(st, key)
	if i < 0 {
		return st
	}
	j := strings.IndexByte(st[i:], ']')
	if j < 0 {
		return st
	}
	list := st[i : i+j]
	return st[:i] + strings.Replace(list, strconv.Quote(from), strconv.Quote(to), 1) + st[i+j:]
}

func ptr[T any](v T) *T { return &v }
