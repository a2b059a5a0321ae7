package queue

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"

	"github.com/google/uuid"
)

// newKey makes a fresh key: a time-ordered random UUID (version 7), so keys
// added one after another land at the right edge of the primary key index.
func newKey() string { return uuid.Must(uuid.NewV7()).String() }

// keysPerString is how many of newKeys' keys share one string: few enough
// that a key kept long after its batch keeps little else alive.
const keysPerString = 128

// newKeys makes n fresh keys as newKey does, with one read of the system's
// randomness for them all and one string per keysPerString keys, instead
// of one of each per key: a batch of AddMany spent a twentieth of its time
// on its keys.
func newKeys(n int) []string {
	if n == 0 {
		return nil
	}
	random := make([]byte, 16*n)
	rand.Read(random) // never fails (crypto/rand)
	r := bytes.NewReader(random)
	keys := make([]string, n)
	text := make([]byte, 0, 36*min(n, keysPerString))
	for start := 0; start < n; start += keysPerString {
		end := min(start+keysPerString, n)
		text = text[:0]
		for range end - start {
			u, err := uuid.NewV7FromReader(r)
			if err != nil { // cannot happen: r holds 16 bytes per key
				panic(err)
			}
			text = appendUUID(text, u)
		}
		all := string(text)
		for i := start; i < end; i++ {
			keys[i] = all[36*(i-start) : 36*(i-start+1)]
		}
	}
	return keys
}

// appendUUID appends u in its canonical form, as u.String() gives it.
func appendUUID(dst []byte, u uuid.UUID) []byte {
	dst = hex.AppendEncode(dst, u[0:4])
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, u[4:6])
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, u[6:8])
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, u[8:10])
	dst = append(dst, '-')
	return hex.AppendEncode(dst, u[10:16])
}
