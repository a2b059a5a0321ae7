// Package notify names the PostgreSQL notification channels shadows uses and
// parses their payloads. Notifications only ever save latency: every waiter
// also polls, so a lost notification costs time, never correctness.
package notify

import "encoding/json"

const (
	// Ready is notified, with the queue name as payload, once per transaction
	// that made tasks due (at most one per queue: PostgreSQL folds identical
	// notifications of one transaction).
	Ready = "shadows_ready"
	// Cancel is notified when a running task is cancelled, or a scheduled
	// one past its first generation (a run of an older generation may still
	// be going); the payload is a JSON object with "queue", "key", the
	// run's "generation" and claim time ("started", Unix microseconds; null
	// when no run of that generation is named) and "below", the generation
	// below which every run of the key stops.
	Cancel = "shadows_cancel"
	// Done is notified, with the queue name as payload, once per transaction
	// that recorded the end of tasks, to wake callers waiting for results.
	Done = "shadows_done"
)

// CancelPayload is the payload of a [Cancel] notification.
type CancelPayload struct {
	Queue string `json:"queue"`
	Key   string `json:"key"`
	// Generation is the cancelled run's; 0 (a payload without one) means
	// every run of the key.
	Generation int64 `json:"generation,omitempty"`
	// Started is the run's claim time in Unix microseconds; 0 (a payload
	// without one) means every run of the key at Generation.
	Started int64 `json:"started,omitempty"`
	// Below, when not 0, stops every run of the key whose generation is
	// lower: runs a replace (or a cancel and a new add) left running under
	// a generation the record has moved past.
	Below int64 `json:"below,omitempty"`
}

// ParseCancel decodes a [Cancel] payload. A malformed payload yields ok=false.
func ParseCancel(payload string) (p CancelPayload, ok bool) {
	if err := json.Unmarshal([]byte(payload), &p); err != nil || p.Key == "" {
		return CancelPayload{}, false
	}
	return p, true
}
