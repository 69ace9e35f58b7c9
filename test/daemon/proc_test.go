package daemon

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestProcStopAndTail(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, script string
		wantNote     string // a substring; "" for none
	}{
		{"stops on SIGTERM", `echo one; echo two; exec sleep 30`, ""},
		{"killed when it ignores SIGTERM", `trap "" TERM; echo one; echo two; while :; do sleep 0.05; done`, "ignored SIGTERM for 200ms; killed"},
		{"already exited", `echo one; echo two`, "had exited before the end: exit status 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".log")
			p, err := Start("d", log, "sh", "-c", tc.script)
			if err != nil {
				t.Fatal(err)
			}
			// Both lines are logged before the daemon waits or exits.
			deadline := time.Now().Add(10 * time.Second)
			for p.Tail(2) != "one\ntwo" {
				if time.Now().After(deadline) {
					t.Fatalf("log tail = %q", p.Tail(2))
				}
				time.Sleep(10 * time.Millisecond)
			}
			if tc.wantNote != "" && strings.Contains(tc.wantNote, "exited") {
				<-p.Done()
			}
			if got := p.Tail(1); got != "two" {
				t.Errorf("Tail(1) = %q, want %q", got, "two")
			}
			note := p.Stop(200 * time.Millisecond)
			if (tc.wantNote == "") != (note == "") || !strings.Contains(note, tc.wantNote) {
				t.Errorf("Stop note = %q, want one with %q", note, tc.wantNote)
			}
			if !p.Exited() {
				t.Error("still running after Stop")
			}
		})
	}
}

func TestNilProc(t *testing.T) {
	var p *Proc
	if p.Stop(time.Second) != "" || p.Tail(3) != "" {
		t.Error("a nil Proc is not a no-op")
	}
}

func TestPIDsByCmdline(t *testing.T) {
	// A duration no other process on the machine sleeps for.
	marker := fmt.Sprintf("30.%09d", time.Now().UnixNano()%1e9)
	p, err := Start("d", filepath.Join(t.TempDir(), "log"), "sleep", marker)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	got := PIDs("no-such-cgroup-of-daemon-test", func(b []byte) bool { return bytes.Equal(b, []byte("sleep\x00"+marker+"\x00")) })
	if !slices.Equal(got, []int{p.PID()}) {
		t.Errorf("PIDs = %v, want [%d]", got, p.PID())
	}
}
