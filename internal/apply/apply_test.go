package apply

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/meshcni/meshcni/internal/rules"
)

// stubKernel lists a ruleset as its rules' strings under "nat", and
// records what is asked of it.
type stubKernel struct {
	held     map[rules.Family]Tables
	inTheWay error // Held's error
	writeErr error // Write fails after writing the first set
	routeErr error
	wrote    []rules.Family
	undone   []rules.Family
	routed   bool
}

func (k *stubKernel) Held(f rules.Family, _ Tables) (Tables, error) {
	return k.held[f], k.inTheWay
}

func (k *stubKernel) Listing(sets []rules.Ruleset) (map[rules.Family]Tables, error) {
	out := map[rules.Family]Tables{}
	for _, rs := range sets {
		out[rs.Family] = listed(rs)
	}
	return out, nil
}

func (k *stubKernel) Write(sets []rules.Ruleset) ([]bool, error) {
	wrote := make([]bool, len(sets))
	for i, rs := range sets {
		wrote[i] = true
		k.wrote = append(k.wrote, rs.Family)
		if k.writeErr != nil {
			return wrote, k.writeErr
		}
	}
	return wrote, nil
}

func (k *stubKernel) Undo(rs rules.Ruleset)          { k.undone = append(k.undone, rs.Family) }
func (k *stubKernel) Route(rules.Routes) error       { k.routed = true; return k.routeErr }
func (k *stubKernel) CheckRoutes(rules.Routes) error { return k.routeErr }
func listed(rs rules.Ruleset) Tables                 { return Tables{"nat": lines(rs)} }
func lines(rs rules.Ruleset) (out []string)          { return append(out, rs.Restore()) }
func families(fs ...rules.Family) []rules.Family     { return fs }
func model(sets ...rules.Ruleset) rules.Model        { return rules.Model{Sets: sets} }
func set(f rules.Family, chain string) rules.Ruleset {
	return rules.Ruleset{Family: f, Rules: []rules.Rule{{Table: "nat", Chain: chain}}}
}

func TestApply(t *testing.T) {
	v4, v6 := set(rules.IPv4, "ISTIO_OUTPUT"), set(rules.IPv6, "ISTIO_OUTPUT")
	boom := errors.New("boom")
	for _, tc := range []struct {
		name         string
		k            stubKernel
		want         error
		wrote, undid []rules.Family
	}{
		{name: "a new netns gets every family", wrote: families(rules.IPv4, rules.IPv6)},
		{name: "a family already there exactly is left alone",
			k: stubKernel{held: map[rules.Family]Tables{rules.IPv4: listed(v4)}}, wrote: families(rules.IPv6)},
		{name: "other capture rules are a conflict, and nothing is written",
			k:    stubKernel{held: map[rules.Family]Tables{rules.IPv6: listed(set(rules.IPv6, "ISTIO_INBOUND"))}},
			want: ErrConflict},
		{name: "rules of another kind in the way",
			k: stubKernel{inTheWay: ErrConflict}, want: ErrConflict},
		{name: "a failed write is undone",
			k: stubKernel{writeErr: boom}, want: boom, wrote: families(rules.IPv4), undid: families(rules.IPv4)},
		{name: "failed routes undo every family written",
			k:    stubKernel{routeErr: boom, held: map[rules.Family]Tables{rules.IPv4: listed(v4)}},
			want: boom, wrote: families(rules.IPv6), undid: families(rules.IPv6)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := tc.k
			err := Apply(&k, model(v4, v6))
			if (tc.want == nil) != (err == nil) || !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !slices.Equal(k.wrote, tc.wrote) || !slices.Equal(k.undone, tc.undid) {
				t.Errorf("wrote %v and undid %v, want %v and %v", k.wrote, k.undone, tc.wrote, tc.undid)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	v4 := set(rules.IPv4, "ISTIO_OUTPUT")
	if err := Check(&stubKernel{held: map[rules.Family]Tables{rules.IPv4: listed(v4)}}, model(v4)); err != nil {
		t.Fatalf("the same rules: %v", err)
	}
	if err := Check(&stubKernel{}, model(v4)); !errors.Is(err, ErrMismatch) {
		t.Fatalf("no rules: got %v, want ErrMismatch", err)
	}
	// Rules of another kind in the way differ from the spec, too.
	err := Check(&stubKernel{inTheWay: ErrConflict}, model(v4))
	if !errors.Is(err, ErrMismatch) || !errors.Is(err, ErrConflict) {
		t.Fatalf("in the way: got %v, want ErrMismatch and ErrConflict", err)
	}
}

func TestCompare(t *testing.T) {
	want := Tables{"nat": {"a", "b"}, "": {"ip x: c"}}
	for _, tc := range []struct {
		name string
		held Tables
		says string // "" = equal
	}{
		{"equal", Tables{"nat": {"a", "b"}, "": {"ip x: c"}}, ""},
		{"another order", Tables{"nat": {"b", "a"}, "": {"ip x: c"}}, "the same rules in another order"},
		{"differences named by table", Tables{"nat": {"a", "z"}},
			"missing 2 rules, 1 unexpected; first differences: missing *nat b; missing ip x: c; unexpected *nat z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Compare(rules.IPv4, want, tc.held, ErrMismatch)
			if tc.says == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("got %v, want ErrMismatch saying %q", err, tc.says)
			}
		})
	}
}
