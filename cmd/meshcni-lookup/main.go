// Command meshcni-lookup is the meshcni plug-in's fallback to the
// Kubernetes API: it reads an apilookup.Request on stdin and writes the
// pod as JSON on stdout, or a CNI error there and exits 1. The plug-in
// runs it only when the agent's pod cache cannot answer, so that the
// plug-in itself links no HTTP or TLS code (internal/apilookup).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshcni/meshcni/internal/apilookup"
	"github.com/meshcni/meshcni/internal/podinfo"
)

func main() {
	if err := run(context.Background(), os.Stdin, os.Stdout); err != nil {
		_ = err.Print()
		os.Exit(1)
	}
}

// run answers one request. The caller (the plug-in) bounds it with its
// own deadline and kills the process when it passes.
func run(ctx context.Context, in io.Reader, out io.Writer) *types.Error {
	var r apilookup.Request
	dec := json.NewDecoder(io.LimitReader(in, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return types.NewError(types.ErrDecodingFailure, "meshcni-lookup: read the request on stdin", err.Error())
	}
	src := podinfo.Local{New: podinfo.NewAPI}
	switch r.Op {
	case apilookup.OpReady:
		return cniError(src.Ready(ctx, r))
	case apilookup.OpPod:
		pod, err := src.Pod(ctx, r)
		if err != nil {
			return cniError(err)
		}
		if err := json.NewEncoder(out).Encode(pod); err != nil {
			return types.NewError(types.ErrIOFailure, "meshcni-lookup: write the pod", err.Error())
		}
		return nil
	}
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("meshcni-lookup: unknown op %q (want %q or %q)", r.Op, apilookup.OpPod, apilookup.OpReady), "")
}

// cniError keeps Source's *types.Error; Source returns no other kind.
func cniError(err error) *types.Error {
	if err == nil {
		return nil
	}
	if te, ok := err.(*types.Error); ok {
		return te
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}
