package worker

import (
	"bytes"
	"encoding/json"
	"slices"
	"unicode/utf8"

	"github.com/shadows-go/shadows/internal/argtag"
)

// argReader reads top-level fields of a task's stored arguments for limit
// and admission keys. It scans the JSON for the field asked for instead of
// decoding the whole object into a map (most keys are found that way at a
// fraction of the cost), and decodes fully only when the scan cannot
// answer: the field is missing (the error lists those present), a key
// carries escapes, or the arguments are not a plain object.
type argReader struct {
	task string
	args json.RawMessage
	// layout, when known, gives the value of an omitempty field the
	// arguments lack: encoding/json dropped it because it was zero. Any
	// other missing field is an error.
	layout *argtag.Layout
	fields map[string]json.RawMessage // nil until decoded
}

// field returns the raw JSON value of the top-level field name.
func (r *argReader) field(name string) (raw json.RawMessage, found bool, err error) {
	if r.fields == nil {
		if raw, found, ok := scanField(r.args, name); ok && found {
			return raw, true, nil
		}
		if err := json.Unmarshal(r.args, &r.fields); err != nil {
			return nil, false, &ArgsError{Task: r.task, Err: err}
		}
		if r.fields == nil { // the arguments were JSON null
			r.fields = map[string]json.RawMessage{}
		}
	}
	raw, found = r.fields[name]
	if !found && r.layout != nil {
		raw, found = r.layout.Omitted(name)
	}
	return raw, found, nil
}

// names lists the top-level fields present, sorted (for error messages).
func (r *argReader) names() []string {
	if r.fields == nil {
		_ = json.Unmarshal(r.args, &r.fields)
	}
	present := make([]string, 0, len(r.fields))
	for k := range r.fields {
		present = append(present, k)
	}
	slices.Sort(present)
	return present
}

// scanField finds the value of the top-level field name in the JSON object
// data without decoding it. data is valid JSON, as PostgreSQL prints a
// jsonb value (the scan does not validate: on invalid JSON its answer is
// unspecified). ok is false when the scan cannot vouch for its answer (not
// an object, a key with escapes, anything unexpected); the caller then
// decodes properly. As encoding/json does, the last of repeated fields
// wins.
func scanField(data []byte, name string) (raw []byte, found, ok bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return nil, false, false
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return nil, false, true
	}
	for i < len(data) {
		if data[i] != '"' {
			return nil, false, false
		}
		end := bytes.IndexByte(data[i+1:], '"')
		if end < 0 {
			return nil, false, false
		}
		key := data[i+1 : i+1+end]
		if bytes.IndexByte(key, '\\') >= 0 {
			return nil, false, false
		}
		i = skipSpace(data, i+2+end)
		if i >= len(data) || data[i] != ':' {
			return nil, false, false
		}
		start := skipSpace(data, i+1)
		stop, good := skipValue(data, start)
		if !good {
			return nil, false, false
		}
		if string(key) == name {
			raw, found = data[start:stop], true
		}
		i = skipSpace(data, stop)
		if i >= len(data) {
			return nil, false, false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return raw, found, skipSpace(data, i+1) == len(data)
		default:
			return nil, false, false
		}
	}
	return nil, false, false
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the JSON value starting at i.
func skipValue(data []byte, i int) (int, bool) {
	if i >= len(data) {
		return i, false
	}
	switch data[i] {
	case '"':
		return skipString(data, i)
	case '{', '[':
		depth := 0
		for i < len(data) {
			switch data[i] {
			case '"':
				end, ok := skipString(data, i)
				if !ok {
					return i, false
				}
				i = end
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, true
				}
			}
			i++
		}
		return i, false
	default: // number, true, false, null
		start := i
		for i < len(data) && data[i] != ',' && data[i] != '}' && data[i] != ']' &&
			data[i] != ' ' && data[i] != '\t' && data[i] != '\n' && data[i] != '\r' {
			i++
		}
		return i, i > start
	}
}

// skipString returns the end of the JSON string starting at i (a quote).
func skipString(data []byte, i int) (int, bool) {
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			j++
		case '"':
			return j + 1, true
		}
	}
	return len(data), false
}

// limitValue renders a JSON value for a key: strings bare, anything else
// compact JSON.
func limitValue(raw json.RawMessage) string {
	// A plain string (no escapes, valid UTF-8) is its bytes between the
	// quotes; decoding would give the same.
	if n := len(raw); n >= 2 && raw[0] == '"' && raw[n-1] == '"' {
		inner := raw[1 : n-1]
		if bytes.IndexByte(inner, '\\') < 0 && bytes.IndexByte(inner, '"') < 0 && utf8.Valid(inner) && !hasControl(inner) {
			return string(inner)
		}
	}
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

func hasControl(b []byte) bool {
	for _, c := range b {
		if c < 0x20 {
			return true
		}
	}
	return false
}
