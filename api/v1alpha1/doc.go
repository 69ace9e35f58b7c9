// Package v1alpha1 is the meshcni.io/v1alpha1 API: the cluster-scoped
// singleton MeshCNI "default" that holds the desired node-side settings
// (spec) and what meshcni-controller observed of them (status).
//
// The CRD that serves it is charts/meshcni/crds/meshcni.io_meshcnis.yaml;
// its schema carries the validation and defaults, so these types stay
// plain data.
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group, version and names of the resource.
const (
	Group    = "meshcni.io"
	Version  = "v1alpha1"
	Kind     = "MeshCNI"
	Resource = "meshcnis"
	// Name is the only name the CRD admits: there is one setting per cluster.
	Name = "default"
)

// SchemeGroupVersion is meshcni.io/v1alpha1.
var SchemeGroupVersion = schema.GroupVersion{Group: Group, Version: Version}

// GroupVersionResource is what dynamic clients and informers address.
var GroupVersionResource = SchemeGroupVersion.WithResource(Resource)

var (
	// SchemeBuilder registers the types with a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds MeshCNI and MeshCNIList to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion, &MeshCNI{}, &MeshCNIList{})
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}
