package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Written by hand: the types are small, and controller-gen would add a
// build-time tool for four functions.

// DeepCopyInto copies in into out.
func (in *MeshCNI) DeepCopyInto(out *MeshCNI) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	in.Spec.DeepCopyInto(&out.Spec)
	in.Status.DeepCopyInto(&out.Status)
}

// DeepCopy returns a copy.
func (in *MeshCNI) DeepCopy() *MeshCNI {
	if in == nil {
		return nil
	}
	out := new(MeshCNI)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject is runtime.Object's.
func (in *MeshCNI) DeepCopyObject() runtime.Object { return in.DeepCopy() }

// DeepCopyInto copies in into out.
func (in *MeshCNIList) DeepCopyInto(out *MeshCNIList) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]MeshCNI, len(in.Items))
		for i := range in.Items {
			in.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopy returns a copy.
func (in *MeshCNIList) DeepCopy() *MeshCNIList {
	if in == nil {
		return nil
	}
	out := new(MeshCNIList)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject is runtime.Object's.
func (in *MeshCNIList) DeepCopyObject() runtime.Object { return in.DeepCopy() }

// DeepCopyInto copies in into out.
func (in *MeshCNISpec) DeepCopyInto(out *MeshCNISpec) {
	*out = *in
	if in.Enabled != nil {
		v := *in.Enabled
		out.Enabled = &v
	}
	if in.ExcludeNamespaces != nil {
		out.ExcludeNamespaces = append([]string{}, in.ExcludeNamespaces...)
	}
}

// DeepCopyInto copies in into out.
func (in *MeshCNIStatus) DeepCopyInto(out *MeshCNIStatus) {
	*out = *in
	if in.Conditions != nil {
		out.Conditions = make([]metav1.Condition, len(in.Conditions))
		for i := range in.Conditions {
			in.Conditions[i].DeepCopyInto(&out.Conditions[i])
		}
	}
}
