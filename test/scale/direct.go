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
	body := func(i int) []byte {
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
		b, _ := json.Marshal(r)
		return b
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		b := body(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			patched, err := post(ctx, client, url, b)
			d := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			res.Sent++
			if err != nil {
				res.Failed++
				if res.Err == nil {
					res.Err = err
				}
				return
			}
			res.Latency = append(res.Latency, d)
			if patched {
				res.Patched++
			}
		}()
	}
	wg.Wait()
	return res, nil
}

func post(ctx context.Context, c *http.Client, url string, body []byte) (patched bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return false, err
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("webhook: %s: %s", resp.Status, out)
	}
	var r admissionv1.AdmissionReview
	if err := json.Unmarshal(out, &r); err != nil || r.Response == nil {
		return false, fmt.Errorf("webhook: not an AdmissionReview answer: %v", err)
	}
	return len(r.Response.Patch) > 0, nil
}
