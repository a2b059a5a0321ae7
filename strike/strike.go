// Package strike describes strike rules: which tasks to stop, by task name
// and by the values of their arguments.
//
// A [Rule] names a task (or every task, with Task empty) and, optionally,
// conditions on its arguments that must all hold:
//
//	strike.Rule{Task: "process_order"}                                       // every process_order
//	strike.Rule{Param: "customer_id", Op: strike.Eq, Value: "12345"}        // any task of that customer
//	strike.Rule{Task: "process_order", Param: "amount", Op: strike.Gt, Value: 10000}
//	strike.Rule{Task: "process_order", Param: "customer_id", Op: strike.Eq, Value: "12345",
//		And: []strike.Condition{{Param: "amount", Op: strike.Ge, Value: 1000}}}
//
// A parameter is a top-level JSON key of the task's arguments. Values are
// strings, numbers, booleans or null. Numbers compare as numbers, strings as
// strings (code point order), booleans and null only with == and != (other
// operators are refused); an argument of another JSON type than the value,
// or a parameter the arguments lack, never matches. PostgreSQL evaluates the
// rules (compiled to SQL/JSON path filters), so producers and workers agree
// the moment a strike commits.
//
// A struck task is not stored when added, and is cancelled if it comes due;
// a Hold rule instead keeps matching tasks waiting until it is restored.
//
// Rules have a text form, used in logs and by the shadows command:
//
//	process_order
//	process_order customer_id == "12345"
//	* amount > 10000
//	process_order customer_id == "12345" and amount >= 1000
//	hold process_order amount between [1000, 5000]
//
// Values are JSON literals: numbers, "strings", true, false, null, and a
// two-element array for between.
package strike

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Op is a comparison operator. The values are docket's spellings.
type Op string

// The operators.
const (
	Eq      Op = "=="
	Ne      Op = "!="
	Lt      Op = "<"
	Le      Op = "<="
	Gt      Op = ">"
	Ge      Op = ">="
	Between Op = "between" // inclusive; the value is a pair [low, high]
)

// ErrInvalidRule is returned for a rule that cannot be stored or parsed.
var ErrInvalidRule = errors.New("invalid strike rule")

// Validate reports whether o is a known operator.
func (o Op) Validate() error {
	switch o {
	case Eq, Ne, Lt, Le, Gt, Ge, Between:
		return nil
	}
	return fmt.Errorf("%w: unknown operator %q (want ==, !=, <, <=, >, >= or between)", ErrInvalidRule, string(o))
}

// Condition is one comparison of a task argument with a value.
type Condition struct {
	// Param is a top-level JSON key of the task's arguments.
	Param string
	// Op defaults to Eq.
	Op Op
	// Value is a string, number, boolean or nil; for Between, a
	// two-element slice or array of numbers or of strings.
	Value any
}

// Rule is a strike: the tasks it matches are not run.
type Rule struct {
	// Task is the task name; empty for every task.
	Task string
	// Param, Op and Value are the rule's first condition; leave Param
	// empty to strike the task whole.
	Param string
	Op    Op
	Value any
	// And are further conditions, all of which must hold too.
	And []Condition
	// Hold keeps matching tasks waiting, untouched, until the rule is
	// restored, instead of cancelling them.
	Hold bool
}

// MaxParamLength bounds parameter names.
const MaxParamLength = 200

// maxValueBytes bounds the JSON encoding of a value.
const maxValueBytes = 10_000

// Conditions returns the rule's conditions: the first (if Param is set)
// followed by And.
func (r Rule) Conditions() []Condition {
	var out []Condition
	if r.Param != "" || r.Op != "" || r.Value != nil {
		out = append(out, Condition{Param: r.Param, Op: r.Op, Value: r.Value})
	}
	return append(out, r.And...)
}

// Compiled is a validated rule in the form it is stored.
type Compiled struct {
	// Task is the task name, empty for every task.
	Task string
	// Conditions is the JSON array stored for the database to evaluate.
	Conditions json.RawMessage
	// Path is the rule as a strict SQL/JSON path filter over the task's
	// arguments, which the database evaluates.
	Path string
	// Text is the canonical text form, which identifies the rule.
	Text string
	Hold bool
}

type storedCondition struct {
	Param string          `json:"param"`
	Op    Op              `json:"op"`
	Value json.RawMessage `json:"value"`
}

// Compile validates r and returns its stored form.
func (r Rule) Compile() (Compiled, error) {
	conds := r.Conditions()
	if r.Task == "" && len(conds) == 0 {
		return Compiled{}, fmt.Errorf("%w: it names neither a task nor a parameter", ErrInvalidRule)
	}
	if err := checkName("task", r.Task); err != nil {
		return Compiled{}, err
	}
	stored := make([]storedCondition, 0, len(conds))
	for _, c := range conds {
		sc, err := c.compile()
		if err != nil {
			return Compiled{}, err
		}
		stored = append(stored, sc)
	}
	raw, err := json.Marshal(stored)
	if err != nil {
		return Compiled{}, fmt.Errorf("%w: %w", ErrInvalidRule, err)
	}
	return Compiled{Task: r.Task, Conditions: raw, Path: jsonPath(stored), Text: format(r.Task, r.Hold, stored), Hold: r.Hold}, nil
}

// jsonPath renders conditions as a strict SQL/JSON path filter. Each
// comparison is guarded by the argument's JSON type, so a value of another
// type, like an absent parameter, never matches.
func jsonPath(conds []storedCondition) string {
	if len(conds) == 0 {
		return "strict $"
	}
	var b strings.Builder
	b.WriteString("strict $ ? (")
	for i, c := range conds {
		if i > 0 {
			b.WriteString(" && ")
		}
		key, _ := json.Marshal(c.Param) // a JSON string is a valid path key literal
		arg := "@." + string(key)
		var v any
		_ = json.Unmarshal(c.Value, &v)
		b.WriteString("(" + arg + ".type() == \"" + jsonType(v) + "\"")
		if c.Op == Between {
			var pair []json.RawMessage
			_ = json.Unmarshal(c.Value, &pair)
			b.WriteString(" && " + arg + " >= " + string(pair[0]) + " && " + arg + " <= " + string(pair[1]))
		} else {
			b.WriteString(" && " + arg + " " + string(c.Op) + " " + string(c.Value))
		}
		b.WriteString(")")
	}
	b.WriteString(")")
	return b.String()
}

// jsonType names the JSON type of a decoded value as SQL/JSON's type()
// does; for a between pair, the type of its elements.
func jsonType(v any) string {
	switch x := v.(type) {
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "boolean"
	case nil:
		return "null"
	case []any:
		if len(x) > 0 {
			return jsonType(x[0])
		}
	}
	return "unknown"
}

func checkName(what, s string) error {
	if len(s) > MaxParamLength {
		return fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalidRule, what, MaxParamLength)
	}
	if !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl) {
		return fmt.Errorf("%w: %s %q has invalid characters", ErrInvalidRule, what, s)
	}
	return nil
}

func (c Condition) compile() (storedCondition, error) {
	if c.Param == "" {
		return storedCondition{}, fmt.Errorf("%w: a condition needs a parameter", ErrInvalidRule)
	}
	if err := checkName("parameter", c.Param); err != nil {
		return storedCondition{}, err
	}
	op := c.Op
	if op == "" {
		op = Eq
	}
	if err := op.Validate(); err != nil {
		return storedCondition{}, err
	}
	raw, err := json.Marshal(c.Value)
	if err != nil {
		return storedCondition{}, fmt.Errorf("%w: value of %s: %w", ErrInvalidRule, c.Param, err)
	}
	if len(raw) > maxValueBytes {
		return storedCondition{}, fmt.Errorf("%w: value of %s is longer than %d bytes", ErrInvalidRule, c.Param, maxValueBytes)
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return storedCondition{}, fmt.Errorf("%w: value of %s: %w", ErrInvalidRule, c.Param, err)
	}
	if n, ok := v.(json.Number); ok {
		if f, err := n.Float64(); err != nil || math.IsInf(f, 0) {
			return storedCondition{}, fmt.Errorf("%w: value of %s is not a finite number", ErrInvalidRule, c.Param)
		}
	}
	switch v.(type) {
	case []any:
		if op != Between {
			return storedCondition{}, fmt.Errorf("%w: value of %s: strike values are strings, numbers, booleans or null, not arrays", ErrInvalidRule, c.Param)
		}
	case map[string]any:
		return storedCondition{}, fmt.Errorf("%w: value of %s: strike values are strings, numbers, booleans or null, not objects", ErrInvalidRule, c.Param)
	case bool, nil:
		if op != Eq && op != Ne {
			return storedCondition{}, fmt.Errorf("%w: %s %s: booleans and null compare only with == and !=", ErrInvalidRule, c.Param, op)
		}
	}
	if op == Between {
		pair, ok := v.([]any)
		if !ok || len(pair) != 2 {
			return storedCondition{}, fmt.Errorf("%w: between needs two values [low, high], got %s", ErrInvalidRule, raw)
		}
		_, n0 := pair[0].(json.Number)
		_, n1 := pair[1].(json.Number)
		_, s0 := pair[0].(string)
		_, s1 := pair[1].(string)
		if !(n0 && n1) && !(s0 && s1) {
			return storedCondition{}, fmt.Errorf("%w: between needs two numbers or two strings, got %s", ErrInvalidRule, raw)
		}
	}
	// Re-encode compactly so equal values give equal text.
	canon, _ := json.Marshal(v)
	return storedCondition{Param: c.Param, Op: op, Value: canon}, nil
}

func format(task string, hold bool, conds []storedCondition) string {
	var b strings.Builder
	if hold {
		b.WriteString("hold ")
	}
	if task == "" {
		b.WriteString("*")
	} else {
		b.WriteString(quoteWord(task))
	}
	for i, c := range conds {
		if i > 0 {
			b.WriteString(" and")
		}
		b.WriteString(" ")
		b.WriteString(quoteWord(c.Param))
		b.WriteString(" ")
		b.WriteString(string(c.Op))
		b.WriteString(" ")
		b.Write(c.Value)
	}
	return b.String()
}

// quoteWord leaves plain words alone and JSON-quotes anything the parser
// would not read back as one word.
func quoteWord(s string) string {
	plain := s != "" && s != "*" && s != "hold" && s != "and" && !strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || r == '"' || r == '[' || r == ']' || r == ','
	})
	if plain {
		return s
	}
	q, _ := json.Marshal(s)
	return string(q)
}

// String returns the rule's text form, or a description of why it is
// invalid.
func (r Rule) String() string {
	c, err := r.Compile()
	if err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	return c.Text
}

// Parse reads a rule in its text form.
func Parse(text string) (Rule, error) {
	toks, err := tokenize(text)
	if err != nil {
		return Rule{}, err
	}
	var r Rule
	if len(toks) > 0 && toks[0] == "hold" {
		r.Hold, toks = true, toks[1:]
	}
	if len(toks) == 0 {
		return Rule{}, fmt.Errorf("%w: %q names no task", ErrInvalidRule, text)
	}
	if toks[0] != "*" {
		r.Task = unquote(toks[0])
	}
	toks = toks[1:]
	for len(toks) > 0 {
		if len(toks) < 3 {
			return Rule{}, fmt.Errorf("%w: %q: a condition is PARAMETER OPERATOR VALUE", ErrInvalidRule, text)
		}
		c := Condition{Param: unquote(toks[0]), Op: Op(toks[1])}
		if err := c.Op.Validate(); err != nil {
			return Rule{}, err
		}
		dec := json.NewDecoder(strings.NewReader(toks[2]))
		dec.UseNumber()
		if err := dec.Decode(&c.Value); err != nil || dec.InputOffset() != int64(len(toks[2])) {
			return Rule{}, fmt.Errorf("%w: value %s is not a JSON literal (quote strings)", ErrInvalidRule, toks[2])
		}
		c.Value = plainNumbers(c.Value)
		if r.Param == "" && len(r.And) == 0 {
			r.Param, r.Op, r.Value = c.Param, c.Op, c.Value
		} else {
			r.And = append(r.And, c)
		}
		toks = toks[3:]
		if len(toks) > 0 {
			if toks[0] != "and" {
				return Rule{}, fmt.Errorf("%w: %q: expected \"and\" before %s", ErrInvalidRule, text, toks[0])
			}
			toks = toks[1:]
			if len(toks) == 0 {
				return Rule{}, fmt.Errorf("%w: %q ends with \"and\"", ErrInvalidRule, text)
			}
		}
	}
	if _, err := r.Compile(); err != nil {
		return Rule{}, err
	}
	return r, nil
}

// plainNumbers turns json.Number values into float64 or int64 so parsed rules
// compare equal to hand-written ones.
func plainNumbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case []any:
		for i := range x {
			x[i] = plainNumbers(x[i])
		}
	}
	return v
}

func unquote(tok string) string {
	if strings.HasPrefix(tok, `"`) {
		var s string
		if json.Unmarshal([]byte(tok), &s) == nil {
			return s
		}
	}
	return tok
}

// tokenize splits text into words, JSON strings and bracketed arrays.
func tokenize(text string) ([]string, error) {
	var toks []string
	i := 0
	for i < len(text) {
		r, size := utf8.DecodeRuneInString(text[i:])
		switch {
		case unicode.IsSpace(r):
			i += size
		case r == '"':
			end, err := scanString(text, i)
			if err != nil {
				return nil, err
			}
			toks = append(toks, text[i:end])
			i = end
		case r == '[':
			depth, j := 0, i
			for j < len(text) {
				switch text[j] {
				case '"':
					end, err := scanString(text, j)
					if err != nil {
						return nil, err
					}
					j = end
					continue
				case '[':
					depth++
				case ']':
					depth--
				}
				j++
				if depth == 0 {
					break
				}
			}
			if depth != 0 {
				return nil, fmt.Errorf("%w: unclosed [ in %q", ErrInvalidRule, text)
			}
			toks = append(toks, text[i:j])
			i = j
		default:
			j := i
			for j < len(text) {
				r, size := utf8.DecodeRuneInString(text[j:])
				if unicode.IsSpace(r) {
					break
				}
				j += size
			}
			toks = append(toks, text[i:j])
			i = j
		}
	}
	return toks, nil
}

// scanString returns the index just past the JSON string starting at i.
func scanString(text string, i int) (int, error) {
	for j := i + 1; j < len(text); j++ {
		switch text[j] {
		case '\\':
			j++
		case '"':
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("%w: unclosed quote in %q", ErrInvalidRule, text)
}
