package chart

import (
	"fmt"
	"strings"
)

// ImageValues splits "registry:5000/repo:tag" or "repo@sha256:..." into
// the chart's image.repository, image.tag and image.digest.
func ImageValues(ref string) (map[string]any, error) {
	repo, tag, digest := ref, "", ""
	if i := strings.Index(ref, "@"); i >= 0 {
		repo, digest = ref[:i], ref[i+1:]
		if !strings.HasPrefix(digest, "sha256:") || len(digest) != len("sha256:")+64 {
			return nil, fmt.Errorf("%q: a digest is @sha256: and 64 hex digits", ref)
		}
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo, tag = repo[:i], repo[i+1:]
	}
	if repo == "" {
		return nil, fmt.Errorf("%q: empty repository", ref)
	}
	return map[string]any{"repository": repo, "tag": tag, "digest": digest}, nil
}
