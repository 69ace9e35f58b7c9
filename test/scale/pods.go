//go:build integration || scale

package scale

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
)

// AppNamespace holds the application pods (captured by meshcni, so the
// webhook converts them).
const AppNamespace = "shop"

// istioTemplate is the pod of the first Deployment of Istio's injector's
// own output for Bookinfo (internal/inject/testdata/istio): what every
// Istio-injected pod looks like, with istio-init.
var (
	istioTemplate    *corev1.Pod
	istioTemplateErr error
	istioOnce        sync.Once
	fixture          = filepath.Join("internal", "inject", "testdata", "istio", "bookinfo-injected-default.yaml")
)

// LoadIstioTemplate reads the fixture from the checkout at repo.
func LoadIstioTemplate(repo string) error {
	istioOnce.Do(func() {
		f, err := os.Open(filepath.Join(repo, fixture))
		if err != nil {
			istioTemplateErr = err
			return
		}
		defer f.Close()
		r := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
		for {
			var obj struct {
				Kind string `json:"kind"`
				Spec struct {
					Template corev1.PodTemplateSpec `json:"template"`
				} `json:"spec"`
			}
			if err := r.Decode(&obj); err != nil {
				if err == io.EOF {
					err = fmt.Errorf("%s: no Deployment", fixture)
				}
				istioTemplateErr = err
				return
			}
			if obj.Kind == "Deployment" {
				istioTemplate = &corev1.Pod{ObjectMeta: obj.Spec.Template.ObjectMeta, Spec: obj.Spec.Template.Spec}
				return
			}
		}
	})
	return istioTemplateErr
}

// IstioPod is an Istio-injected pod (with istio-init) named name, bound
// to node ("" leaves it unbound: for dry runs).
func IstioPod(namespace, name, node string) *corev1.Pod {
	p := istioTemplate.DeepCopy()
	p.Namespace, p.Name, p.Spec.NodeName = namespace, name, node
	return p
}

// Converted reports whether the webhook converted the pod: istio-init
// became Istio's CNI-mode istio-validation.
func Converted(p *corev1.Pod) bool {
	names := make([]string, 0, len(p.Spec.InitContainers))
	for _, c := range p.Spec.InitContainers {
		names = append(names, c.Name)
	}
	return slices.Contains(names, "istio-validation") && !slices.Contains(names, "istio-init")
}

// LoadResult is one paced run of pod creates.
type LoadResult struct {
	Rate      int     // creates per second asked for
	Achieved  float64 // creates per second sent
	Created   int     // succeeded
	Failed    int     // failed, first error in Err
	Converted int     // came back converted by the webhook
	Latency   []time.Duration
	Err       error
}

// CreatePods creates n Istio-injected pods in namespace at rate per
// second (open loop: a create is sent on schedule whether or not the
// earlier ones returned, as a burst of ReplicaSets would), spread over
// nodes, named prefix-i, and times each create as the client sees it.
func CreatePods(ctx context.Context, c kubernetes.Interface, namespace, prefix string, n, rate, nodes int) LoadResult {
	res := LoadResult{Rate: rate, Latency: make([]time.Duration, 0, n)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p := IstioPod(namespace, fmt.Sprintf("%s-%d", prefix, i), NodeName(i%nodes))
			t0 := time.Now()
			got, err := c.CoreV1().Pods(namespace).Create(ctx, p, metav1.CreateOptions{})
			d := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Failed++
				if res.Err == nil {
					res.Err = err
				}
				return
			}
			res.Created++
			res.Latency = append(res.Latency, d)
			if Converted(got) {
				res.Converted++
			}
		}(i)
	}
	sent := time.Since(start)
	wg.Wait()
	if sent > 0 && n > 1 {
		res.Achieved = float64(n-1) / sent.Seconds()
	}
	return res
}

// PodSummary counts pods by whether they are Ready, listing from the
// API server's cache in pages.
func PodSummary(ctx context.Context, c kubernetes.Interface, namespace, selector string) (total, ready int, byHash map[string]int, err error) {
	byHash = map[string]int{}
	opts := metav1.ListOptions{LabelSelector: selector, Limit: 5000}
	for {
		l, err := c.CoreV1().Pods(namespace).List(ctx, opts)
		if err != nil {
			return 0, 0, nil, err
		}
		for i := range l.Items {
			p := &l.Items[i]
			if p.DeletionTimestamp != nil {
				continue
			}
			total++
			if podReady(p) {
				ready++
				byHash[p.Annotations["meshcni.io/config-hash"]]++
			}
		}
		if l.Continue == "" {
			return total, ready, byHash, nil
		}
		opts.Continue = l.Continue
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
