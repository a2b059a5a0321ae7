package queue

import (
	"slices"
	"testing"

	"github.com/google/uuid"
)

// TestNewKeys checks that batch-made keys read as uuid.NewV7's do: canonical
// text, version 7, the RFC variant, in the order they were made, all
// different.
func TestNewKeys(t *testing.T) {
	keys := newKeys(5000)
	if len(keys) != 5000 {
		t.Fatalf("got %d keys, want 5000", len(keys))
	}
	seen := make(map[string]bool, len(keys))
	for i, k := range keys {
		u, err := uuid.Parse(k)
		if err != nil {
			t.Fatalf("key %d %q: %v", i, k, err)
		}
		if u.String() != k {
			t.Fatalf("key %d %q is not canonical (%q)", i, k, u.String())
		}
		if u.Version() != 7 || u.Variant() != uuid.RFC4122 {
			t.Fatalf("key %d %q: version %d variant %v, want 7 and RFC 4122", i, k, u.Version(), u.Variant())
		}
		if seen[k] {
			t.Fatalf("key %d %q made twice", i, k)
		}
		seen[k] = true
	}
	if !slices.IsSorted(keys) {
		t.Fatal("keys made one after another are not in ascending order")
	}
	if next := newKey(); next <= keys[len(keys)-1] {
		t.Fatalf("a key made later (%s) sorts before an earlier one (%s)", next, keys[len(keys)-1])
	}
	if newKeys(0) != nil {
		t.Fatal("newKeys(0) made keys")
	}
}
