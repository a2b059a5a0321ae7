// Package argtag reads the shadows struct tags of task argument types and
// renders arguments for logs.
//
// A field appears in logs only when tagged:
//
//	CustomerID string   `json:"customer_id" shadows:"logged"`         // customer_id="12345"
//	Items      []Item   `json:"items"       shadows:"logged,length"`  // items=[len 3]
//	CardNumber string   `json:"card_number"`                          // card_number=...
//
// "length" shows the size of a slice, array or string as [len N] and of a
// map as {len N}. "required" marks a field without which the task cannot be
// seeded automatically. Any other option is an error, reported when the
// task is registered.
package argtag

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
)

type mode int

const (
	hidden mode = iota
	value
	length
)

type field struct {
	name     string // the JSON key
	index    []int  // for reflect.Value.FieldByIndex: embedded structs are flattened
	mode     mode
	required bool
	omitted  json.RawMessage // for an omitempty field, its zero value as JSON (nil otherwise)
}

// Layout is how one argument type appears in logs. The zero Layout shows
// nothing. It is safe for concurrent use.
type Layout struct {
	fields []field
}

// Parse reads the tags of t, a struct type or a pointer to one. Other types
// have no fields to show. The fields of embedded structs without a JSON
// name are the type's own, as encoding/json promotes them; a field of the
// outer struct hides an embedded one of the same name.
func Parse(t reflect.Type) (*Layout, error) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	l := &Layout{}
	if t.Kind() != reflect.Struct {
		return l, nil
	}
	taken := map[string]bool{}
	// Breadth first, so that a shallower field wins a name.
	type level struct {
		t     reflect.Type
		index []int
	}
	for current := []level{{t: t}}; len(current) > 0; {
		var next []level
		var found []field
		for _, lv := range current {
			for i := range lv.t.NumField() {
				sf := lv.t.Field(i)
				index := append(append([]int(nil), lv.index...), i)
				name, named, omitempty := sf.Name, false, false
				if tag, ok := sf.Tag.Lookup("json"); ok {
					first, opts, _ := strings.Cut(tag, ",")
					if first == "-" && opts == "" {
						continue
					}
					if first != "" {
						name, named = first, true
					}
					for opt := range strings.SplitSeq(opts, ",") {
						omitempty = omitempty || opt == "omitempty"
					}
				}
				if sf.Anonymous && !named {
					et := sf.Type
					if et.Kind() == reflect.Pointer {
						et = et.Elem()
					}
					if et.Kind() == reflect.Struct {
						next = append(next, level{t: et, index: index})
						continue
					}
				}
				if !sf.IsExported() {
					continue
				}
				f := field{name: name, index: index}
				if zero, err := json.Marshal(reflect.Zero(sf.Type).Interface()); err == nil && omitempty {
					f.omitted = zero
				}
				if tag, ok := sf.Tag.Lookup("shadows"); ok {
					for opt := range strings.SplitSeq(tag, ",") {
						switch strings.TrimSpace(opt) {
						case "logged":
							if f.mode == hidden {
								f.mode = value
							}
						case "length":
							f.mode = length
						case "required":
							f.required = true
						case "":
						default:
							return nil, fmt.Errorf("field %s: unknown shadows tag option %q (want logged, length or required)", sf.Name, opt)
						}
					}
				}
				found = append(found, f)
			}
		}
		for _, f := range found {
			if !taken[f.name] {
				taken[f.name] = true
				l.fields = append(l.fields, f)
			}
		}
		current = next
	}
	return l, nil
}

// Omitted is the value, as JSON, of an omitempty field named name when the
// arguments lack it: encoding/json leaves such a field out when it is
// zero. It reports false for any other field, whose absence means the
// arguments are not of this type.
func (l *Layout) Omitted(name string) (json.RawMessage, bool) {
	for _, f := range l.fields {
		if f.name == name && f.omitted != nil {
			return f.omitted, true
		}
	}
	return nil, false
}

// Fields lists the JSON names of the type's fields, in order.
func (l *Layout) Fields() []string {
	out := make([]string, len(l.fields))
	for i, f := range l.fields {
		out[i] = f.name
	}
	return out
}

// Required lists the JSON names of the fields tagged required.
func (l *Layout) Required() []string {
	var out []string
	for _, f := range l.fields {
		if f.required {
			out = append(out, f.name)
		}
	}
	return out
}

// Format renders v's fields as `name=value, …`, showing the value only of
// logged fields, the size only of length fields, and `...` for the rest.
func (l *Layout) Format(v any) string {
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return ""
		}
		rv = rv.Elem()
	}
	if rv.Kind() != reflect.Struct {
		return ""
	}
	var b strings.Builder
	for i, f := range l.fields {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(f.name)
		b.WriteByte('=')
		fv, err := rv.FieldByIndexErr(f.index)
		if err != nil { // a nil embedded pointer
			b.WriteString("<nil>")
			continue
		}
		switch f.mode {
		case hidden:
			b.WriteString("...")
		case value:
			b.WriteString(show(fv))
		case length:
			b.WriteString(size(fv))
		}
	}
	return b.String()
}

func show(v reflect.Value) string {
	if v.Kind() == reflect.String {
		return fmt.Sprintf("%q", v.String())
	}
	if v.CanInterface() {
		if s, ok := v.Interface().(fmt.Stringer); ok {
			return fmt.Sprintf("%q", s.String())
		}
	}
	return fmt.Sprintf("%v", v)
}

func size(v reflect.Value) string {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return "<nil>"
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.Slice, reflect.Array, reflect.String:
		return fmt.Sprintf("[len %d]", v.Len())
	case reflect.Map:
		return fmt.Sprintf("{len %d}", v.Len())
	}
	return show(v)
}
