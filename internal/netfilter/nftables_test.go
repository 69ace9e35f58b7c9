package netfilter

import (
	"slices"
	"strings"
	"testing"
)

func TestParseBackend(t *testing.T) {
	for in, want := range map[string]Backend{
		"": Auto, "auto": Auto, " NFTables ": Nftables,
		"iptables-legacy": Legacy, "iptables-nft": NFT,
		"legacy": Legacy, "nft": NFT, // the older spellings
	} {
		if got, err := ParseBackend(in); err != nil || got != want {
			t.Errorf("ParseBackend(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	// A backend's name parses back to itself.
	for _, b := range []Backend{Legacy, NFT, Nftables} {
		if got, err := ParseBackend(string(b)); err != nil || got != b {
			t.Errorf("ParseBackend(%q) = %q, %v", b, got, err)
		}
	}
	for b, want := range map[Backend][2]string{Legacy: {"iptables-legacy", "ip6tables-legacy"}, NFT: {"iptables-nft", "ip6tables-nft"}, Nftables: {}} {
		if got := [2]string{b.Command(false), b.Command(true)}; got != want {
			t.Errorf("%s commands %q, want %q", b, got, want)
		}
	}
	if _, err := ParseBackend("iptables"); err == nil || !strings.Contains(err.Error(), "nftables (native)") {
		t.Errorf("an unknown backend must list the choices, got %v", err)
	}
}

// nftLines keeps only meshcni's tables, one line per chain and per rule.
func TestNftLines(t *testing.T) {
	list := `table ip nat {
	chain ISTIO_OUTPUT {
		counter packets 0 bytes 0 return
	}
}
table ip meshcni {
	chain nat_output {
		type nat hook output priority -100; policy accept;
		jump istio_output
	}

	chain istio_output {
		ip daddr 127.0.0.1 return
	}
}
table ip6 meshcni {
	chain istio_redirect {
	}
}
`
	want := []string{
		"ip chain nat_output { type nat hook output priority -100; policy accept; }",
		"ip nat_output: jump istio_output",
		"ip chain istio_output",
		"ip istio_output: ip daddr 127.0.0.1 return",
		"ip6 chain istio_redirect",
	}
	if got := nftLines(list); !slices.Equal(got, want) {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
