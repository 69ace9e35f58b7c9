package netfilter

import (
	"context"
	"fmt"
	"sync"

	"github.com/meshcni/meshcni/internal/capture"
)

// Fake is an in-memory Interface with the Applier's semantics: same spec
// twice is a no-op, a different one is ErrConflict, a failed apply leaves
// nothing. Set Err to make the next calls fail.
type Fake struct {
	mu    sync.Mutex
	specs map[string]capture.Spec
	// Err, when set, is returned by Apply and Check without side effects.
	Err error
	// Calls counts Apply calls, including refused ones.
	Calls int
}

var _ Interface = (*Fake)(nil)

// NewFake returns an empty Fake.
func NewFake() *Fake { return &Fake{specs: map[string]capture.Spec{}} }

// Apply implements Interface.
func (f *Fake) Apply(_ context.Context, path string, spec capture.Spec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls++
	if f.Err != nil {
		return f.Err
	}
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("invalid capture spec: %w", err)
	}
	if old, ok := f.specs[path]; ok {
		if old.Equal(spec) {
			return nil
		}
		return fmt.Errorf("%w in %s", ErrConflict, path)
	}
	f.specs[path] = spec
	return nil
}

// Check implements Interface.
func (f *Fake) Check(_ context.Context, path string, spec capture.Spec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	old, ok := f.specs[path]
	if !ok || !old.Equal(spec) {
		return fmt.Errorf("%w in %s", ErrMismatch, path)
	}
	return nil
}

// Remove implements Interface.
func (f *Fake) Remove(_ context.Context, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.specs, path)
	return nil
}

// Spec returns what was applied to path.
func (f *Fake) Spec(path string) (capture.Spec, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.specs[path]
	return s, ok
}
