package ctl

import (
	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/ctl/cluster"
)

// What tests outside meshcnictl read from it (test/console, test/agent,
// internal/console), kept here so the split into cluster and node did not
// move them.
type (
	VersionInfo = cluster.VersionInfo
	Component   = cluster.Component
)

// ConfigHashAnnotation is the agents' settings hash, as the chart writes it.
const ConfigHashAnnotation = chart.ConfigHashAnnotation

// RenderIn renders the chart's node side into namespace, as
// meshcni-controller does, with the namespace itself.
var RenderIn = cluster.RenderIn
