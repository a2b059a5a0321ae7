package worker

import "testing"

// A cancel names the run it cancels: once a cancel has freed a key, the
// same worker may run the key's next generation while the old one winds
// down, and a late notification for the old run must leave the new one
// alone. A cancel without a generation (an older payload) stops them all.
func TestCancelRunHitsOnlyTheNamedGeneration(t *testing.T) {
	s := inflightSet{m: make(map[inflightKey]*inflight)}
	old := s.add(&execution{Info: Info{Key: "k"}, generation: 1})
	cur := s.add(&execution{Info: Info{Key: "k"}, generation: 2})
	other := s.add(&execution{Info: Info{Key: "other"}, generation: 1})

	s.cancelRun("k", 1)
	if !old.wasCancelled() || old.ctx.Err() == nil {
		t.Fatal("the named run was not cancelled")
	}
	if cur.wasCancelled() || cur.ctx.Err() != nil {
		t.Fatal("a cancel of generation 1 cancelled generation 2")
	}

	s.cancelRun("k", 0)
	if !cur.wasCancelled() {
		t.Fatal("a cancel without a generation left a run of the key running")
	}
	if other.wasCancelled() {
		t.Fatal("a cancel of k cancelled another key")
	}
	s.cancelRun("k", 7) // no such run: nothing happens
}
