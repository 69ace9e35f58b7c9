package plugin

import (
	"io"
	"time"

	"github.com/meshcni/meshcni/internal/addstat"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/podspec"
)

// addRecord is an ADD's outcome: the verdict's code when it stands, else
// the code of the step that failed. backend is what programmed the pod
// (Auto when nothing did).
func addRecord(t *target, err error, backend netfilter.Backend, took time.Duration) addstat.Record {
	b := string(backend)
	switch {
	case err == nil && t.verdict.Capture:
		return addstat.New(addstat.Captured, t.verdict.Code, b, took)
	case err == nil:
		return addstat.New(addstat.Skipped, t.verdict.Code, "", took)
	case t == nil:
		// The config, CNI_ARGS or the missing prevResult: nothing parsed.
		return addstat.New(addstat.Failed, podspec.CodeInvalidInput, b, took)
	case t.failed != "":
		return addstat.New(addstat.Failed, t.failed, b, took)
	case t.verdict.Code == podspec.CodeInvalidPod || t.verdict.Code == podspec.CodeBudget:
		return addstat.New(addstat.Failed, t.verdict.Code, b, took)
	}
	// A captured verdict and an error: the rules were not programmed.
	return addstat.New(addstat.Failed, podspec.CodeApplyFailed, b, took)
}

// sendRecord writes r to the agent's socket, if it listens. A failed
// write loses the record and nothing else: metrics never fail an ADD.
// The socket has the one-second write deadline openLog set, and a
// record is ~100 bytes, far below a socket buffer the agent drains.
func sendRecord(sock io.Writer, r addstat.Record) {
	if sock != nil {
		_, _ = sock.Write(r.Line())
	}
}
