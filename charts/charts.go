// Package charts embeds the meshcni Helm chart, so that meshcnictl renders
// and applies exactly the chart in this tree, with no Helm binary.
package charts

import "embed"

// FS holds meshcni/ (Chart.yaml, values.yaml, values.schema.json,
// templates/, including files that start with "_").
//
//go:embed all:meshcni
var FS embed.FS

// Root is the chart's directory in FS.
const Root = "meshcni"
