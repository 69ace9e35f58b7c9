package scale

import (
	"fmt"
	"time"
)

// kwokAnnotation marks the nodes kwok plays (kwok's own convention).
const kwokAnnotation = "kwok.x-k8s.io/node"

// kwokStages is kwok's configuration: what a kubelet would do, reduced to
// what the measurements need. A node becomes Ready with room for any pod;
// a bound pod becomes Running and Ready at once (DaemonSet availability
// and rollout.Assess read the Ready condition); a deleted pod is removed
// (the kubelet's graceful termination, at once). kwokHeartbeat adds the
// kubelet's node status updates. No node Lease: nothing here reads it, and
// its load is the kubelet's, not meshcni's.
const kwokStages = `apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-initialize
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
        message: kwok
        reason: KubeletReady
        status: "True"
        type: Ready
      addresses:
      - address: {{ NodeName | Quote }}
        type: Hostname
      allocatable: {cpu: 1k, memory: 1Ti, pods: 1M}
      capacity: {cpu: 1k, memory: 1Ti, pods: 1M}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: kwok
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
  next:
    finalizers:
      empty: true
    delete: true
`

// kwokHeartbeat is a Stage that updates each Ready node's status every
// period on average (uniformly between half and one and a half of it), as
// a kubelet does (every 5 minutes by default, nodeStatusReportFrequency,
// when nothing changed): what every watcher of Nodes sees at steady state.
func kwokHeartbeat(period time.Duration) string {
	lo, hi := heartbeatDelay(period)
	return fmt.Sprintf(`---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-heartbeat
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values: ['True']
  delay:
    durationMilliseconds: %d
    jitterDurationMilliseconds: %d
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      {{ range .status.conditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ .lastTransitionTime | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
  immediateNextStage: true
`, lo.Milliseconds(), hi.Milliseconds())
}

// heartbeatDelay is the range of a node's wait from one heartbeat to the
// next: half to one and a half of period, but never under a second. A
// heartbeat's lastHeartbeatTime has one-second precision, so a heartbeat
// within the second of the previous one writes the same status: the
// PATCH changes nothing, the watch sends no event, and kwok, which runs
// the stage again only on an event, never heartbeats that node again. At
// a period of 1 s (the small run) about one heartbeat in eight did that,
// and within half a minute the nodes had all gone quiet, so that the
// steady-state window saw no heartbeat (TestSmallScale failed in CI).
func heartbeatDelay(period time.Duration) (lo, hi time.Duration) {
	lo, hi = period/2, period*3/2
	lo = max(lo, time.Second)
	hi = max(hi, lo)
	return lo, hi
}
