package worker

import (
	"bytes"
	"encoding/json"
	"testing"
)

// scanField must agree with decoding the whole object whenever it claims
// to know the answer, and limitValue must render what it always rendered.
// Stored arguments are always valid JSON (jsonb output); the malformed
// documents here only check that the scan gives up on these shapes.
func TestScanFieldAgreesWithDecoding(t *testing.T) {
	docs := []string{
		`{"customer_id": "c-1", "order_id": 12345}`,
		`{"a":1,"b":{"c":[1,2,{"d":"}"}]},"c":"x\"y","d":null,"e":true,"f":-1.5e3}`,
		` { "a" : [ ] , "b" : { } , "c" : "" } `,
		`{"a": "first", "a": "last"}`,
		`{"caf\u00e9": 1, "a": "é ü 😀"}`,
		`{"a": "tab\there", "b": "line\nbreak", "c": "\u0041"}`,
		`{}`,
		`[1, 2]`,
		`null`,
		`"text"`,
		`{"a": 1`,
		`{"a" 1}`,
		`{"a": 1,}`,
		`{"a": 1} trailing`,
	}
	names := []string{"a", "b", "c", "d", "e", "f", "customer_id", "order_id", "missing", "café"}
	for _, doc := range docs {
		var m map[string]json.RawMessage
		decodeErr := json.Unmarshal([]byte(doc), &m)
		for _, name := range names {
			raw, found, ok := scanField([]byte(doc), name)
			if !ok {
				continue // the caller decodes; nothing to compare
			}
			if decodeErr != nil {
				t.Errorf("scanField(%s, %q) answered for JSON that does not decode as an object", doc, name)
				continue
			}
			want, wantFound := m[name]
			if found != wantFound || (found && string(raw) != string(want)) {
				t.Errorf("scanField(%s, %q) = %s, %v; decoding gives %s, %v", doc, name, raw, found, want, wantFound)
			}
			if found && limitValue(raw) != slowLimitValue(want) {
				t.Errorf("limitValue(%s) = %q, want %q", raw, limitValue(raw), slowLimitValue(want))
			}
		}
	}
}

// slowLimitValue is limitValue without its fast path.
func slowLimitValue(raw json.RawMessage) string {
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

func TestArgReaderFallsBackToDecoding(t *testing.T) {
	r := &argReader{task: "t", args: json.RawMessage(`{"x\u0041": "escaped key", "b": 2}`)}
	raw, found, err := r.field("xA")
	if err != nil || !found || string(raw) != `"escaped key"` {
		t.Fatalf("field(xA) = %s, %v, %v", raw, found, err)
	}
	if _, found, err := r.field("missing"); err != nil || found {
		t.Fatalf("field(missing) found=%v err=%v", found, err)
	}
	if got := r.names(); len(got) != 2 || got[0] != "b" || got[1] != "xA" {
		t.Fatalf("names() = %v", got)
	}
	bad := &argReader{task: "t", args: json.RawMessage(`[1]`)}
	if _, _, err := bad.field("a"); err == nil {
		t.Fatal("arguments that are not an object gave no error")
	}
}

func BenchmarkLimitKeys(b *testing.B) {
	limits := []ConcurrencyLimit{{Arg: "customer_id", Max: 5}}
	args := json.RawMessage(`{"order_id": 12345, "customer_id": "c-17"}`)
	for b.Loop() {
		if _, err := limitKeys("process_order", limits, args, nil); err != nil {
			b.Fatal(err)
		}
	}
}
