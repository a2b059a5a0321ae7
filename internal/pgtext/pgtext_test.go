package pgtext

import (
	"encoding/json"
	"testing"
)

func TestText(t *testing.T) {
	for in, want := range map[string]string{
		"plain":           "plain",
		"a\x00b":          "ab",
		"bad \xff\xfe ok": "bad \uFFFD ok",
		"":                "",
	} {
		if got := Text(in); got != want {
			t.Errorf("Text(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCheckJSON(t *testing.T) {
	nul, _ := json.Marshal(map[string]string{"s": "a\x00b"})
	literal, _ := json.Marshal(map[string]string{"s": `\u0000`}) // a backslash, not an escape
	for _, tc := range []struct {
		raw  string
		want error
	}{
		{`{"a": 1}`, nil},
		{string(nul), ErrNUL},
		{string(literal), nil},
		{`["\\\u0000"]`, ErrNUL}, // an escaped backslash, then the escape
		{`["\ud83d\ude00"]`, nil},
		{`["\ud83d"]`, ErrSurrogate},
		{`["\ud83dx"]`, ErrSurrogate},
		{`["\ude00"]`, ErrSurrogate},
		{`["\u00e9\n\t"]`, nil},
		{``, nil},
	} {
		if got := CheckJSON([]byte(tc.raw)); got != tc.want {
			t.Errorf("CheckJSON(%s) = %v, want %v", tc.raw, got, tc.want)
		}
	}
}
