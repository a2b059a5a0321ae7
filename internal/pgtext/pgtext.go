// Package pgtext says what PostgreSQL refuses to store in text and jsonb
// columns, so that values can be checked, or made storable, before they
// reach a statement. Outcomes are recorded in batches: one value the
// server refuses would fail its whole batch, over and over.
//
// text refuses NUL bytes and invalid UTF-8 (in a UTF-8 database); jsonb
// also refuses the escape \u0000 and \u escapes of unpaired UTF-16
// surrogates, which encoding/json accepts.
package pgtext

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// Text returns s as a text column stores it: NUL bytes dropped, and each
// run of invalid UTF-8 bytes replaced by U+FFFD.
func Text(s string) string {
	if utf8.ValidString(s) && !strings.Contains(s, "\x00") {
		return s
	}
	return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
}

// ErrNUL and ErrSurrogate are the reasons CheckJSON gives.
var (
	ErrNUL       = errors.New(`JSON with the escape \u0000, which PostgreSQL cannot store`)
	ErrSurrogate = errors.New(`JSON with a \u escape of an unpaired UTF-16 surrogate, which PostgreSQL cannot store`)
)

// CheckJSON reports whether valid JSON text raw holds an escape that jsonb
// refuses (see the package doc). It reads escapes only, so a literal
// backslash followed by "u0000" (encoded as \\u0000) is fine.
func CheckJSON(raw []byte) error {
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' || i+1 >= len(raw) {
			continue
		}
		if raw[i+1] != 'u' || i+6 > len(raw) {
			i++ // a two-byte escape such as \" or \\
			continue
		}
		r, ok := hex4(raw[i+2 : i+6])
		switch {
		case !ok:
		case r == 0:
			return ErrNUL
		case r >= 0xD800 && r < 0xDC00: // high surrogate: a low one must follow
			if i+12 > len(raw) || raw[i+6] != '\\' || raw[i+7] != 'u' {
				return ErrSurrogate
			}
			if lo, ok := hex4(raw[i+8 : i+12]); !ok || lo < 0xDC00 || lo >= 0xE000 {
				return ErrSurrogate
			}
			i += 6
		case r >= 0xDC00 && r < 0xE000:
			return ErrSurrogate
		}
		i += 5
	}
	return nil
}

func hex4(b []byte) (rune, bool) {
	var r rune
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}
