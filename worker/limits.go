package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/shadows-go/shadows/db"
	"github.com/shadows-go/shadows/internal/argtag"
)

// checkArgs verifies at registration that every argument a limit or an
// admission rule names exists.
func checkArgs(p Policy, layout *argtag.Layout) error {
	fields := layout.Fields()
	check := func(what, arg string) error {
		if arg != "" && !slices.Contains(fields, arg) {
			return fmt.Errorf("%s on %q: the arguments have no such field (they have %s)", what, arg, strings.Join(fields, ", "))
		}
		return nil
	}
	var errs []error
	for _, l := range p.Concurrency {
		errs = append(errs, check("concurrency limit", l.Arg))
	}
	for _, c := range p.Cooldown {
		errs = append(errs, check("cooldown", c.Arg))
	}
	if p.Debounce != nil {
		errs = append(errs, check("debounce", p.Debounce.Arg))
	}
	for _, r := range p.RateLimit {
		errs = append(errs, check("rate limit", r.Arg))
	}
	return errors.Join(errs...)
}

// slotRequest is one limit a claimed task needs a slot of.
type slotRequest struct {
	key string
	max int
}

// limitKeys computes the keys of a task's concurrency limits from its
// arguments.
func limitKeys(task string, limits []ConcurrencyLimit, args json.RawMessage, layout *argtag.Layout) ([]slotRequest, error) {
	fields := &argReader{task: task, args: args, layout: layout}
	out := make([]slotRequest, 0, len(limits))
	for _, l := range limits {
		key, err := ruleKey("concurrency limit", task, l.Arg, l.Scope, fields)
		if err != nil {
			return nil, err
		}
		// Two limits naming the same key (the same argument and scope)
		// are one slot, under the smaller maximum.
		if i := slices.IndexFunc(out, func(s slotRequest) bool { return s.key == key }); i >= 0 {
			out[i].max = min(out[i].max, l.Max)
			continue
		}
		out = append(out, slotRequest{key: key, max: l.Max})
	}
	return out, nil
}

// maxRuleKeyBytes bounds a limit or admission key: the keys are indexed
// beside the queue name (at most 200 bytes), and an index entry cannot
// exceed about a third of a page (2,704 bytes). A task whose argument value
// makes a longer key fails with an error saying so.
const maxRuleKeyBytes = 2000

// ruleKey is the key of a limit or admission rule: "[scope/]arg:value" per
// argument value, "[scope/]task:name" for the task as a whole. An argument
// missing from the arguments is an error that names it and lists those
// present.
func ruleKey(what, task, arg, scope string, fields *argReader) (string, error) {
	var key string
	if arg == "" {
		key = "task:" + task
	} else {
		raw, ok, err := fields.field(arg)
		if err != nil {
			return "", err
		}
		if !ok {
			return "", fmt.Errorf("%s argument %q not found in task arguments; available: [%s]", what, arg, strings.Join(fields.names(), ", "))
		}
		key = arg + ":" + limitValue(raw)
	}
	if scope != "" {
		key = scope + "/" + key
	}
	if len(key) > maxRuleKeyBytes {
		return "", fmt.Errorf("%s key for argument %q is %d bytes long; at most %d fit", what, arg, len(key), maxRuleKeyBytes)
	}
	return key, nil
}

// admission is the arguments of one admission check.
func admission(task, key string, p *compiledPolicy, args json.RawMessage) (db.AdmitParams, error) {
	a := db.AdmitParams{TaskKey: key}
	fields := &argReader{task: task, args: args, layout: p.layout}
	add := func(kind, what, arg, scope string, window time.Duration, limit int, drop bool) error {
		k, err := ruleKey(what, task, arg, scope, fields)
		if err != nil {
			return err
		}
		if kind == "ratelimit" {
			// Each period counts its own runs: a burst limit and a
			// sustained one on the same argument are two records.
			k += " per " + window.String()
		}
		a.Kinds = append(a.Kinds, kind)
		a.Keys = append(a.Keys, k)
		a.Seconds = append(a.Seconds, window.Seconds())
		a.Limits = append(a.Limits, int32(limit))
		a.Drops = append(a.Drops, drop)
		return nil
	}
	if d := p.Debounce; d != nil {
		if err := add("debounce", "debounce", d.Arg, d.Scope, d.Settle, 0, false); err != nil {
			return a, err
		}
	}
	for _, c := range p.Cooldown {
		if err := add("cooldown", "cooldown", c.Arg, c.Scope, c.Window, 0, false); err != nil {
			return a, err
		}
	}
	for _, r := range p.RateLimit {
		if err := add("ratelimit", "rate limit", r.Arg, r.Scope, r.Per, r.Limit, r.Drop); err != nil {
			return a, err
		}
	}
	return a, nil
}
