package worker

import (
	"sync"
	"sync/atomic"
	"testing"
)

// Both claim loops reserve slots at once: together they must never hold
// more than the concurrency, however their reservations interleave with
// handlers ending.
func TestReservationsNeverExceedTheConcurrency(t *testing.T) {
	const concurrency = 7
	w := &Worker{cfg: Config{Concurrency: concurrency}}
	var held, peak atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 20000 {
				n := w.reserve()
				if n == 0 {
					continue
				}
				h := held.Add(int64(n))
				for p := peak.Load(); h > p && !peak.CompareAndSwap(p, h); p = peak.Load() {
				}
				held.Add(int64(-n))
				w.unreserve(n)
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > concurrency {
		t.Fatalf("%d slots reserved at once with Concurrency %d", p, concurrency)
	}
	if r := w.running.Load(); r != 0 {
		t.Fatalf("%d slots left reserved after every reservation was given back", r)
	}
}
