package rules

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// stubKernel lists a ruleset as its rules' strings under "nat", and
// records what is asked of it.
type stubKernel struct {
	held     map[Family]Listing
	inTheWay error // Held's error
	writeErr error // Write fails after writing the first set
	routeErr error
	wrote    []Family
	undone   []Family
	routed   bool
}

func (k *stubKernel) Held(f Family, _ Listing) (Listing, error) {
	return k.held[f], k.inTheWay
}

func (k *stubKernel) Lists(sets []Ruleset) (map[Family]Listing, error) {
	out := map[Family]Listing{}
	for _, rs := range sets {
		out[rs.Family] = listed(rs)
	}
	return out, nil
}

func (k *stubKernel) Write(sets []Ruleset) ([]bool, error) {
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

func (k *stubKernel) Undo(rs Ruleset)          { k.undone = append(k.undone, rs.Family) }
func (k *stubKernel) Route(Routes) error       { k.routed = true; return k.routeErr }
func (k *stubKernel) CheckRoutes(Routes) error { return k.routeErr }
func listed(rs Ruleset) Listing                { return Listing{"nat": lines(rs)} }
func lines(rs Ruleset) (out []string)          { return append(out, rs.Restore()) }
func families(fs ...Family) []Family           { return fs }
func model(sets ...Ruleset) Model              { return Model{Sets: sets} }
func set(f Family, chain string) Ruleset {
	return Ruleset{Family: f, Rules: []Rule{{Table: "nat", Chain: chain}}}
}

func TestApply(t *testing.T) {
	v4, v6 := set(IPv4, "ISTIO_OUTPUT"), set(IPv6, "ISTIO_OUTPUT")
	boom := errors.New("boom")
	for _, tc := range []struct {
		name         string
		k            stubKernel
		want         error
		wrote, undid []Family
	}{
		{name: "a new netns gets every family", wrote: families(IPv4, IPv6)},
		{name: "a family already there exactly is left alone",
			k: stubKernel{held: map[Family]Listing{IPv4: listed(v4)}}, wrote: families(IPv6)},
		{name: "other capture rules are a conflict, and nothing is written",
			k:    stubKernel{held: map[Family]Listing{IPv6: listed(set(IPv6, "ISTIO_INBOUND"))}},
			want: ErrConflict},
		{name: "rules of another kind in the way",
			k: stubKernel{inTheWay: ErrConflict}, want: ErrConflict},
		{name: "a failed write is undone",
			k: stubKernel{writeErr: boom}, want: boom, wrote: families(IPv4), undid: families(IPv4)},
		{name: "failed routes undo every family written",
			k:    stubKernel{routeErr: boom, held: map[Family]Listing{IPv4: listed(v4)}},
			want: boom, wrote: families(IPv6), undid: families(IPv6)},
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
	v4 := set(IPv4, "ISTIO_OUTPUT")
	if err := Check(&stubKernel{held: map[Family]Listing{IPv4: listed(v4)}}, model(v4)); err != nil {
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
	want := Listing{"nat": {"a", "b"}, "": {"ip x: c"}}
	for _, tc := range []struct {
		name string
		held Listing
		says string // "" = equal
	}{
		{"equal", Listing{"nat": {"a", "b"}, "": {"ip x: c"}}, ""},
		{"another order", Listing{"nat": {"b", "a"}, "": {"ip x: c"}}, "the same rules in another order"},
		{"differences named by table", Listing{"nat": {"a", "z"}},
			"missing 2 rules, 1 unexpected; first differences: missing *nat b; missing ip x: c; unexpected *nat z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Compare(IPv4, want, tc.held, ErrMismatch)
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
