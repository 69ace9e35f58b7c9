package repair

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/podspec"
)

func meshPod(ns string, st ...corev1.ContainerStatus) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "p", UID: "u1"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}, {Name: "istio-proxy"}}},
		Status:     corev1.PodStatus{InitContainerStatuses: st},
	}
}

func terminated(code int32, at time.Time) *corev1.ContainerStateTerminated {
	return &corev1.ContainerStateTerminated{ExitCode: code, FinishedAt: metav1.NewTime(at)}
}

func TestBrokenBy(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	failedNow := corev1.ContainerStatus{Name: ValidationContainer, State: corev1.ContainerState{Terminated: terminated(126, t0)}}
	crashLoop := corev1.ContainerStatus{Name: ValidationContainer, RestartCount: 1,
		State:                corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
		LastTerminationState: corev1.ContainerState{Terminated: terminated(126, t0)}}
	other := corev1.ContainerStatus{Name: ValidationContainer, State: corev1.ContainerState{Terminated: terminated(1, t0)}}
	passed := corev1.ContainerStatus{Name: ValidationContainer, State: corev1.ContainerState{Terminated: terminated(0, t0)}}
	unrelated := corev1.ContainerStatus{Name: "init-db", State: corev1.ContainerState{Terminated: terminated(126, t0)}}

	f1, ok := brokenBy(meshPod("shop", failedNow), podspec.NewJudge(capture.Default(), nil))
	if !ok {
		t.Fatal("a validation exit 126 must be repaired")
	}
	f2, ok := brokenBy(meshPod("shop", crashLoop), podspec.NewJudge(capture.Default(), nil))
	if !ok || f1 != f2 {
		t.Fatalf("the same failure seen in crash loop must have the same key: %q vs %q", f1, f2)
	}
	later := crashLoop
	later.LastTerminationState.Terminated = terminated(126, t0.Add(time.Minute))
	if f3, _ := brokenBy(meshPod("shop", later), podspec.NewJudge(capture.Default(), nil)); f3 == f1 {
		t.Fatal("a new failure must have a new key")
	}
	for name, pod := range map[string]*corev1.Pod{
		"other exit code":    meshPod("shop", other),
		"passed":             meshPod("shop", passed),
		"unrelated init":     meshPod("shop", unrelated),
		"excluded namespace": meshPod("kube-system", failedNow),
	} {
		if _, ok := brokenBy(pod, podspec.NewJudge(capture.Default(), []string{"kube-system"})); ok {
			t.Errorf("%s: must not be repaired", name)
		}
	}
	noSidecar := meshPod("shop", failedNow)
	noSidecar.Spec.Containers = noSidecar.Spec.Containers[:1]
	if _, ok := brokenBy(noSidecar, podspec.NewJudge(capture.Default(), nil)); ok {
		t.Error("a pod meshcni does not capture must not be repaired")
	}
}

func TestParseMode(t *testing.T) {
	for _, s := range []string{"repair", "delete", "label"} {
		if _, err := ParseMode(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	if _, err := ParseMode("reboot"); err == nil {
		t.Error("unknown mode accepted")
	}
}
