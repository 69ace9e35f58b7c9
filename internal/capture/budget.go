package capture

import (
	"errors"
	"fmt"
	"strings"
)

// RuleBudget bounds the rules one pod's spec may yield, over both IP
// families. Istio bounds no list, and meshcni bounds none either; it is
// the products that hurt: every include CIDR is repeated for every
// rerouted interface, and 4.7 KB of annotations once made 66,067 rules
// (223 MB of heap and 6 s for one nftables ADD, in the node's agent too).
// A pod of Istio's defaults yields 20 rules; with 257 excluded CIDRs, 277.
// At 2,048 one ADD costs at most about 0.3 s and 17 MB on the slowest
// backend (nftables: cost grows linearly with the rules), and its CHECK
// under a second; measured by TestRuleBudgetMeasure, in docs/reliability.md.
const RuleBudget = 2048

// RuleCount is the number of rules Build (package rules) makes for s,
// counted without building them, so that an oversized spec is refused
// before it costs anything. TestRuleCountMatchesBuild holds it to Build.
func (s Spec) RuleCount() int {
	n := s.familyRules(false)
	if s.IPv6 {
		n += s.familyRules(true)
	}
	return n
}

func (s Spec) familyRules(v6 bool) int {
	ofFamily := func(a interface{ Is6() bool }) bool { return a.Is6() == v6 }
	var include, exclude, servers int
	loopbackIncluded := false
	for _, p := range s.OutboundCIDRs.List {
		if ofFamily(p.Addr()) {
			include++
		}
		loopbackIncluded = loopbackIncluded || p.Addr().IsLoopback()
	}
	for _, p := range s.ExcludeOutboundCIDRs {
		if ofFamily(p.Addr()) {
			exclude++
		}
	}
	for _, a := range s.DNSServers {
		if ofFamily(a) {
			servers++
		}
	}
	tproxy := s.Mode == TProxy
	ifTP := func(n int) int {
		if tproxy {
			return n
		}
		return 0
	}
	perPort := 1 + ifTP(1) // TPROXY: a divert and a tproxy rule per port
	nics, reroute := len(s.ExcludeInterfaces), len(s.RerouteInterfaces)
	owners := len(s.ProxyUIDs) + len(s.ProxyGIDs)

	n := 2*nics + ifTP(2*nics) + reroute
	if s.DropInvalid {
		n += 2
	}
	n += 3 // tunnel port return, the two redirect chains
	if !s.InboundPorts.Empty() {
		n += ifTP(3) + 1
		if s.InboundPorts.All {
			n += len(s.ExcludeInboundPorts) + perPort
		} else {
			n += len(s.InboundPorts.List) * perPort
		}
	}
	n += 2 + 2*len(s.ExcludeOutboundPorts)
	perOwner := 2
	if !loopbackIncluded {
		perOwner++
	}
	n += owners * perOwner
	if s.RedirectDNS && (s.CaptureAllDNS || len(s.DNSServers) > 0) {
		n += 1 + 2*owners
		switch {
		case s.CaptureAllDNS:
			n += 1 + 2 + 3
		case servers > 0:
			n += 1 + 2*servers + 1 + 2*servers
		}
	}
	n += 1 + exclude + len(s.OutboundPorts)
	if s.OutboundCIDRs.All {
		n += 1 + reroute
	} else {
		n += include * (1 + reroute)
	}
	n += ifTP(2 + owners + 1 + 3)
	return n
}

// listAnnotations are the annotations whose items each add rules.
var listAnnotations = []string{
	AnnotationIncludeOutboundCIDRs, AnnotationExcludeOutboundCIDRs,
	AnnotationIncludeInboundPorts, AnnotationExcludeInboundPorts,
	AnnotationIncludeOutboundPorts, AnnotationExcludeOutboundPorts,
	AnnotationExcludeInterfaces, AnnotationRerouteInterfaces, AnnotationKubevirtInterfaces,
}

// ErrOverBudget matches (errors.Is) the error of a pod whose rules would
// exceed RuleBudget, so that callers can count it apart; the message
// stays the one that says what to shorten.
var ErrOverBudget = errors.New("over the rule budget")

type overBudget struct{ msg string }

func (e overBudget) Error() string        { return e.msg }
func (e overBudget) Is(target error) bool { return target == ErrOverBudget }

// budgetError names the pod's list annotations and their sizes, since
// which of them to shorten is the owner's choice.
func budgetError(n int, annotations map[string]string) error {
	var lists []string
	for _, key := range listAnnotations {
		if v, ok := annotations[key]; ok {
			lists = append(lists, fmt.Sprintf("%s (%d items)", key, len(splitList(v))))
		}
	}
	if len(lists) == 0 {
		lists = append(lists, "none: the node's defaults alone")
	}
	return overBudget{fmt.Sprintf("the pod's capture would take %d rules, over meshcni's budget of %d per pod "+
		"(include CIDRs count once per rerouted interface); shorten or merge the lists in its annotations: %s",
		n, RuleBudget, strings.Join(lists, ", "))}
}
