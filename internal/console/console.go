// Package console serves the meshcni console: one small page (embedded, no
// external assets) to switch the plug-in on and off, choose the excluded
// namespaces and follow the rollout live, and the JSON and Server-Sent
// Events endpoints behind it.
//
// Every API request the handler makes on a caller's behalf carries the
// caller's own bearer token and nothing of the controller's credentials, so
// the API server's RBAC decides what the caller may read and change and its
// audit log names the caller. A request without a token is refused; no
// header can claim an identity, because the API server verifies the token
// (docs/console.md, "Security design").
package console

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

//go:embed web
var web embed.FS

const (
	// TokenHeader carries the caller's bearer token when Authorization
	// cannot: the API server's service proxy removes Authorization after it
	// authenticates the caller. meshcnictl console sets it.
	TokenHeader = "X-Meshcni-Authorization"
	// csrfHeader must be on every write. A page of another origin cannot
	// send a custom header without a CORS preflight, which the handler
	// never grants.
	csrfHeader = "X-Meshcni-Console"
	maxBody    = 64 << 10
)

// Options configure New.
type Options struct {
	// Config says where the API server is and how to trust it. Its own
	// credentials are never used on a caller's behalf, unless Local.
	Config *rest.Config
	// Namespace is where the agents run (the controller's namespace).
	Namespace string
	// Local acts with Config's credentials for every request, for a page
	// served on loopback to the one user whose kubeconfig Config is
	// (meshcnictl console --local). Never set it in the controller.
	Local bool
	// Log is where request errors go; nil means slog.Default().
	Log *slog.Logger
}

type handler struct {
	opts Options
	log  *slog.Logger
}

// New returns the console's handler. Serve it at the root of its own
// listener or under a prefix with http.StripPrefix: the page uses relative
// URLs only, so it also works behind the API server's service proxy.
func New(opts Options) (http.Handler, error) {
	if opts.Config == nil {
		return nil, errors.New("console: a rest.Config is required")
	}
	if opts.Namespace == "" {
		return nil, errors.New("console: the agents' namespace is required")
	}
	h := &handler{opts: opts, log: opts.Log}
	if h.log == nil {
		h.log = slog.Default()
	}
	static, err := fs.Sub(web, "web")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /", http.FileServerFS(static))
	mux.HandleFunc("GET /api/state", h.getState)
	mux.HandleFunc("GET /api/events", h.events)
	mux.HandleFunc("POST /api/settings", h.update)
	return secureHeaders(mux), nil
}

// secureHeaders keeps the page to its own origin: no framing, no inline or
// foreign scripts, no referrer leaking the proxy URL.
func secureHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// caller are the clients that act as the caller.
type caller struct {
	kube kubernetes.Interface
	dyn  dynamic.Interface
}

var errNoToken = errors.New("no credentials: open the console with \"meshcnictl console\", which signs each request with your kubeconfig")

// bearer is the caller's token: Authorization when the request came
// straight here, TokenHeader when it came through the service proxy.
func bearer(r *http.Request) string {
	for _, v := range []string{r.Header.Get("Authorization"), r.Header.Get(TokenHeader)} {
		if tok, ok := strings.CutPrefix(v, "Bearer "); ok && strings.TrimSpace(tok) != "" {
			return strings.TrimSpace(tok)
		}
	}
	return ""
}

func (h *handler) callerFor(r *http.Request) (*caller, error) {
	cfg := rest.CopyConfig(h.opts.Config)
	if !h.opts.Local {
		tok := bearer(r)
		if tok == "" {
			return nil, errNoToken
		}
		// Drop every credential of the controller (token, client
		// certificate, impersonation, exec plug-in): only the caller's.
		cfg = rest.AnonymousClientConfig(h.opts.Config)
		cfg.BearerToken = tok
	}
	cfg.UserAgent = "meshcni-console"
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &caller{kube: kube, dyn: dyn}, nil
}

// access says who the caller is and whether they may update the MeshCNI.
func (c *caller) access(ctx context.Context) (user string, can bool, reason string) {
	if r, err := c.kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{}); err == nil {
		user = r.Status.UserInfo.Username
	}
	who := user
	if who == "" {
		who = "your user"
	}
	ssar := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authorizationv1.ResourceAttributes{Group: GVR.Group, Resource: GVR.Resource, Name: Name, Verb: "update"},
	}}
	res, err := c.kube.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, ssar, metav1.CreateOptions{})
	if err != nil {
		return user, false, fmt.Sprintf("Read-only: could not ask the API server whether %s may update meshcnis: %v", who, err)
	}
	if !res.Status.Allowed {
		return user, false, fmt.Sprintf("Read-only: %s may not update meshcnis.meshcni.io (RBAC). Ask a cluster administrator for a role that allows it.", who)
	}
	return user, true, ""
}

// state reads everything as the caller. Parts the caller may not read are
// reported in the state, not as a failure of the whole page.
func (h *handler) state(ctx context.Context, c *caller, user string, can bool, reason string) State {
	s := State{User: user, CanUpdate: can, ReadOnlyReason: reason}
	mc, err := c.dyn.Resource(GVR).Get(ctx, Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		s.Settings(nil)
	case err != nil:
		s.Settings(nil)
		s.Phase = "Unknown"
		s.Message = ""
		s.Error = fmt.Sprintf("cannot read MeshCNI %q: %v", Name, err)
	default:
		s.Settings(mc)
	}
	s.Namespaces = []string{}
	if nss, err := c.kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
		s.NamespacesError = fmt.Sprintf("cannot list namespaces: %v", err)
	} else {
		for _, ns := range nss.Items {
			s.Namespaces = append(s.Namespaces, ns.Name)
		}
	}
	var pods []corev1.Pod
	if list, err := c.kube.CoreV1().Pods(h.opts.Namespace).List(ctx, metav1.ListOptions{LabelSelector: AgentSelector}); err != nil {
		s.NodesError = fmt.Sprintf("cannot list the agent pods in %s: %v", h.opts.Namespace, err)
	} else {
		pods = list.Items
	}
	s.Agents(pods)
	return s
}

func (h *handler) getState(w http.ResponseWriter, r *http.Request) {
	c, err := h.callerFor(r)
	if err != nil {
		writeError(w, http.StatusUnauthorized, err.Error())
		return
	}
	user, can, reason := c.access(r.Context())
	writeJSON(w, http.StatusOK, h.state(r.Context(), c, user, can, reason))
}

// events streams the state as Server-Sent Events: the whole state now, and
// again whenever the caller's watch of the MeshCNI or of the agent pods
// reports a change. When a watch ends (the API server closes watches after
// a while) the stream ends and the browser's EventSource reconnects.
func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	c, err := h.callerFor(r)
	if err != nil {
		writeError(w, http.StatusUnauthorized, err.Error())
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// Watch before the first read, so no change falls between them.
	changes := make(chan struct{}, 1)
	notify := func() {
		select {
		case changes <- struct{}{}:
		default: // one pending refresh covers any number of changes
		}
	}
	watchers := 0
	done := make(chan struct{}, 2)
	follow := func(wi watch.Interface) {
		watchers++
		go func() {
			for range wi.ResultChan() {
				notify()
			}
			done <- struct{}{}
		}()
	}
	// A watch the caller may not open is left out: the state then says
	// what they cannot read.
	if wi, err := c.dyn.Resource(GVR).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + Name}); err == nil {
		defer wi.Stop()
		follow(wi)
	}
	if wi, err := c.kube.CoreV1().Pods(h.opts.Namespace).Watch(ctx, metav1.ListOptions{LabelSelector: AgentSelector}); err == nil {
		defer wi.Stop()
		follow(wi)
	}

	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	user, can, reason := c.access(ctx)
	send := func() error {
		data, err := json.Marshal(h.state(ctx, c, user, can, reason))
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "retry: 2000\nevent: state\ndata: %s\n\n", data); err != nil {
			return err
		}
		flusher.Flush()
		return nil
	}
	if err := send(); err != nil || watchers == 0 {
		return // nothing to follow: the page shows why (the state says)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-done:
			return
		case <-changes:
			if err := send(); err != nil {
				return
			}
		}
	}
}

// Update is what the page sends: the two settings it edits, and the
// resourceVersion it showed, so a change made meanwhile by someone else is
// not overwritten unseen.
type Update struct {
	Enabled           bool     `json:"enabled"`
	ExcludeNamespaces []string `json:"excludeNamespaces"`
	ResourceVersion   string   `json:"resourceVersion"`
}

// Validate checks u before any request is made.
func (u *Update) Validate() error {
	if u.ExcludeNamespaces == nil {
		return errors.New("excludeNamespaces is required (an empty list excludes none)")
	}
	seen := map[string]bool{}
	for _, ns := range u.ExcludeNamespaces {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return fmt.Errorf("excluded namespace %q: %s", truncate(ns, 80), strings.Join(errs, "; "))
		}
		if seen[ns] {
			return fmt.Errorf("excluded namespace %q is listed twice", ns)
		}
		seen[ns] = true
	}
	return nil
}

func (h *handler) update(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(csrfHeader) != "1" {
		writeError(w, http.StatusForbidden, "missing the "+csrfHeader+" header: writes come from the console page only")
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		writeError(w, http.StatusUnsupportedMediaType, "the body must be application/json")
		return
	}
	c, err := h.callerFor(r)
	if err != nil {
		writeError(w, http.StatusUnauthorized, err.Error())
		return
	}
	var u Update
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&u); err != nil {
		writeError(w, http.StatusBadRequest, "bad settings: "+err.Error())
		return
	}
	if err := u.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx := r.Context()
	res := c.dyn.Resource(GVR)
	if u.ResourceVersion == "" {
		obj := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{
			"enabled": u.Enabled, "excludeNamespaces": toAny(u.ExcludeNamespaces),
		}}}
		obj.SetGroupVersionKind(GVK)
		obj.SetName(Name)
		_, err = res.Create(ctx, obj, metav1.CreateOptions{FieldManager: "meshcni-console"})
	} else {
		// A merge patch with the resourceVersion the page showed: the API
		// server refuses it (409) if the object changed since.
		patch, _ := json.Marshal(map[string]any{
			"metadata": map[string]any{"resourceVersion": u.ResourceVersion},
			"spec":     map[string]any{"enabled": u.Enabled, "excludeNamespaces": u.ExcludeNamespaces},
		})
		_, err = res.Patch(ctx, Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "meshcni-console"})
	}
	switch {
	case err == nil:
		user, can, reason := c.access(ctx)
		writeJSON(w, http.StatusOK, h.state(ctx, c, user, can, reason))
	case apierrors.IsForbidden(err):
		writeError(w, http.StatusForbidden, "the API server refused the change: "+err.Error())
	case apierrors.IsConflict(err), apierrors.IsAlreadyExists(err):
		writeError(w, http.StatusConflict, "the settings were changed meanwhile; the page now shows them: review and update again")
	case apierrors.IsInvalid(err):
		writeError(w, http.StatusUnprocessableEntity, err.Error())
	default:
		h.log.Warn("console: update MeshCNI", "err", err)
		writeError(w, http.StatusBadGateway, "update MeshCNI: "+err.Error())
	}
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
