package chart

import (
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/charts"
)

// CRD returns the MeshCNI CustomResourceDefinition, decoded.
func CRD() (*unstructured.Unstructured, error) {
	data, err := charts.FS.ReadFile(charts.Root + "/" + CRDFile)
	if err != nil {
		return nil, fmt.Errorf("read embedded CRD: %w", err)
	}
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &obj.Object); err != nil {
		return nil, fmt.Errorf("%s: %w", CRDFile, err)
	}
	return obj, nil
}
