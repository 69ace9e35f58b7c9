//go:build integration || scale

package scale

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// DirectResult is one paced run of AdmissionReviews sent straight to the
// webhook, as the API server sends them (HTTPS, kept-alive connections,
// the CA from the webhook configuration), without the API server's own
// work around the call: the webhook's latency alone.
type DirectResult struct {
	Rate    int
	Sent    int
	Patched int // answers that carry a patch (the pod converted)
	Failed  int
	Err     error
	Latency []time.Duration
}

// CallWebhook sends n reviews of an Istio-injected pod at rate per second
// to the running webhook.
func (e *Env) CallWebhook(ctx context.Context, n, rate int) (DirectResult, error) {
	res := DirectResult{Rate: rate, Latency: make([]time.Duration, 0, n)}
	if e.mwc == nil || len(e.mwc.Webhooks) == 0 {
		return res, fmt.Errorf("no webhook configuration")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(e.mwc.Webhooks[0].ClientConfig.CABundle) {
		return res, fmt.Errorf("webhook configuration: no CA bundle")
	}
	addr := "127.0.0.1:" + strconv.Itoa(e.webhookPort)
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: webhookHost, MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 100,
	}}
	defer client.CloseIdleConnections()
	raw, err := json.Marshal(IstioPod(AppNamespace, "", ""))
	if err != nil {
		return res, err
	}
	url := fmt.Sprintf("https://%s:%d/mutate", webhookHost, e.webhookPort)
	// The bodies are built before the clock starts, so that the client's
	// own encoding (and its garbage) is not in the webhook's latency.
	bodies := make([][]byte, warmup+n)
	for i := range bodies {
		r := admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{
				UID:       types.UID(fmt.Sprintf("direct-%d", i)),
				Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
				Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
				Namespace: AppNamespace, Operation: admissionv1.Create,
				Object: runtime.RawExtension{Raw: raw},
			},
		}
		if bodies[i], err = json.Marshal(r); err != nil {
			return res, err
		}
	}
	// The API server keeps its connections to a webhook open; so does
	// this client. A warm-up at the rate opens them, so that the TLS
	// handshakes of the first requests are not counted as reviews.
	if _, err := pace(ctx, client, url, bodies[:warmup], rate); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	calls, err := pace(ctx, client, url, bodies[warmup:], rate)
	for _, c := range calls {
		res.Sent++
		if c.err != nil {
			res.Failed++
			if res.Err == nil {
				res.Err = c.err
			}
			continue
		}
		res.Latency = append(res.Latency, c.took)
		if c.patched {
			res.Patched++
		}
	}
	return res, err
}

// warmup is how many reviews CallWebhook sends before it measures.
const warmup = 50

// call is one review sent by pace.
type call struct {
	took    time.Duration // request sent → answer read
	patched bool
	err     error
}

// pace sends bodies at rate per second, each on its own goroutine, and
// returns every call's outcome; err is only ctx's.
func pace(ctx context.Context, client *http.Client, url string, bodies [][]byte, rate int) ([]call, error) {
	calls := make([]call, len(bodies))
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i, b := range bodies {
		if ctx.Err() != nil {
			calls = calls[:i]
			break
		}
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &calls[i]
			c.patched, c.took, c.err = post(ctx, client, url, b)
		}()
	}
	wg.Wait()
	return calls, ctx.Err()
}

// post sends one review; took ends when the answer is read, before the
// client decodes it.
func post(ctx context.Context, c *http.Client, url string, body []byte) (patched bool, took time.Duration, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return false, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	t0 := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return false, 0, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	took = time.Since(t0)
	if err != nil {
		return false, took, err
	}
	if resp.StatusCode != http.StatusOK {
		return false, took, fmt.Errorf("webhook: %s: %s", resp.Status, out)
	}
	var r admissionv1.AdmissionReview
	if err := json.Unmarshal(out, &r); err != nil || r.Response == nil {
		return false, took, fmt.Errorf("webhook: not an AdmissionReview answer: %v", err)
	}
	return len(r.Response.Patch) > 0, took, nil
}
