// Package buildinfo exports meshcni_build_info{version,revision,goversion}
// = 1, the series by which dashboards and alerts tell which build of a
// component runs (the convention of Prometheus' own *_build_info).
package buildinfo

import (
	"errors"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Version is set at link time:
//
//	go build -ldflags "-X github.com/meshcni/meshcni/internal/buildinfo.Version=v0.2.0"
//
// Empty means the module version Go recorded ("(devel)" in the repository).
var Version = ""

// Info is what the series says.
type Info struct {
	Version, Revision, GoVersion string
}

// Read returns this binary's Info.
func Read() Info {
	return From(debug.ReadBuildInfo())
}

// From is the Info that bi says (ok: bi was there), with Version first.
func From(bi *debug.BuildInfo, ok bool) Info {
	in := Info{Version: Version, Revision: "unknown", GoVersion: runtime.Version()}
	if ok {
		if bi.GoVersion != "" {
			in.GoVersion = bi.GoVersion
		}
		if in.Version == "" {
			in.Version = bi.Main.Version
		}
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Revision = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && in.Revision != "unknown" {
			in.Revision += "-dirty"
		}
	}
	if in.Version == "" {
		in.Version = "unknown"
	}
	return in
}

// Collector returns the meshcni_build_info gauge of in.
func Collector(in Info) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "meshcni_build_info",
		Help:        "Always 1; its labels name the meshcni build that runs: version, VCS revision, Go version.",
		ConstLabels: prometheus.Labels{"version": in.Version, "revision": in.Revision, "goversion": in.GoVersion},
	})
	g.Set(1)
	return g
}

// MustRegister registers this binary's meshcni_build_info in reg. Several
// packages of one binary (the controller serving the webhook) may each
// register it: a second registration is not an error.
func MustRegister(reg prometheus.Registerer) {
	if err := reg.Register(Collector(Read())); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			panic(err)
		}
	}
}
