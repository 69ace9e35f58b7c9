package netfilter

import (
	"context"
	"sync/atomic"
)

type backendKey struct{}

// RecordBackend returns a context under which the Applier notes the
// backend each visit to a netns used (after Auto's detection), and a
// func that returns the last one noted, or Auto when no visit got that
// far. The plug-in labels its ADD latency with it; the note is a store
// into memory the caller owns, so it costs the visit nothing.
func RecordBackend(ctx context.Context) (context.Context, func() Backend) {
	var last atomic.Value
	last.Store(Auto)
	return context.WithValue(ctx, backendKey{}, &last), func() Backend { return last.Load().(Backend) }
}

// noteBackend records b in ctx's recorder, if it has one.
func noteBackend(ctx context.Context, b Backend) {
	if last, ok := ctx.Value(backendKey{}).(*atomic.Value); ok {
		last.Store(b)
	}
}
