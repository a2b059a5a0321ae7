package worker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/shadows-go/shadows/internal/argtag"
)

// checkLimits verifies at registration that every limited argument exists.
func checkLimits(limits []ConcurrencyLimit, layout *argtag.Layout) error {
	fields := layout.Fields()
	for _, l := range limits {
		if l.Arg != "" && !slices.Contains(fields, l.Arg) {
			return fmt.Errorf("concurrency limit on %q: the arguments have no such field (they have %s)", l.Arg, strings.Join(fields, ", "))
		}
	}
	return nil
}

// slotRequest is one limit a claimed task needs a slot of.
type slotRequest struct {
	key string
	max int
}

// limitKeys computes the keys of a task's limits from its arguments:
// "[scope/]arg:value" per argument value, "[scope/]task:name" for the task
// as a whole. A limited argument missing from the arguments is an error
// that names it and lists those present.
func limitKeys(task string, limits []ConcurrencyLimit, args json.RawMessage) ([]slotRequest, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(args, &fields); err != nil {
		return nil, &ArgsError{Task: task, Err: err}
	}
	out := make([]slotRequest, 0, len(limits))
	for _, l := range limits {
		var key string
		if l.Arg == "" {
			key = "task:" + task
		} else {
			raw, ok := fields[l.Arg]
			if !ok {
				present := make([]string, 0, len(fields))
				for k := range fields {
					present = append(present, k)
				}
				slices.Sort(present)
				return nil, fmt.Errorf("concurrency limit argument %q not found in task arguments; available: [%s]", l.Arg, strings.Join(present, ", "))
			}
			key = l.Arg + ":" + limitValue(raw)
		}
		if l.Scope != "" {
			key = l.Scope + "/" + key
		}
		out = append(out, slotRequest{key: key, max: l.Max})
	}
	return out, nil
}

// limitValue renders a JSON value for a key: strings bare, anything else
// compact JSON.
func limitValue(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}
