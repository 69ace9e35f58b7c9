package node

import (
	"os"
	"strings"
	"testing"
)

// verify refuses the node's own netns before it runs anything in it.
func TestRefuseHostNetNS(t *testing.T) {
	err := refuseHostNetNS("/proc/self/ns/net", "/proc")
	if err == nil || !strings.Contains(err.Error(), "node's own network namespace") {
		t.Fatalf("got %v", err)
	}
	if os.Getuid() == 0 {
		if err := refuseHostNetNS("/proc/1/ns/net", "/proc"); err == nil {
			t.Error("init's netns was not refused")
		}
	}
}
