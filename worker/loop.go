package worker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shadows-go/shadows/db"
)

// claimLoops runs the claim loop and, beside it, a helper that claims only
// while a backlog lasts, until ctx is cancelled or, with untilFinished, the
// queue has nothing left to run.
//
// One loop took turns with itself: while a claim was in the database the
// worker turned nothing into running tasks, and while it scanned rows and
// started them the database waited (a 100,000-task burn spent 99% of its
// time inside claims). With two, one claim is in the database while the
// other's rows are being started, and both cores of a small machine work.
func (w *Worker) claimLoops(ctx context.Context, untilFinished bool, tasks *sync.WaitGroup) (finished bool) {
	w.claiming.Store(true)
	defer w.claiming.Store(false)
	if w.cfg.Concurrency < 2 {
		return w.claimLoop(ctx, untilFinished, tasks)
	}
	helperCtx, stopHelper := context.WithCancel(ctx)
	var helper sync.WaitGroup
	helper.Go(func() { w.helpClaim(helperCtx, tasks) })
	finished = w.claimLoop(ctx, untilFinished, tasks)
	stopHelper()
	helper.Wait()
	return finished
}

// claimLoop claims due tasks while there are free slots and starts each in
// its own goroutine, until ctx is cancelled or, with untilFinished, the
// queue has nothing left to run (then it reports true). It never waits on a
// running task. It alone looks for lapsed leases, waits for notifications
// and polls.
func (w *Worker) claimLoop(ctx context.Context, untilFinished bool, tasks *sync.WaitGroup) (finished bool) {
	poll := time.NewTimer(0)
	defer poll.Stop()
	var (
		failures  int
		lastSweep time.Time
		backlog   bool // the last claim filled every free slot
	)
	for ctx.Err() == nil {
		free := 0
		if !w.done.backlogged() {
			// While outcomes are ended faster than they are recorded,
			// claim nothing more until the finisher catches up.
			free = w.reserve()
		}
		if free > 0 {
			sweep := time.Since(lastSweep) >= w.sweepInterval()
			n, started, err := w.claimReserved(ctx, free, sweep, tasks)
			if err != nil {
				if !w.backOffAfter(ctx, err, &failures) {
					return false
				}
				continue
			}
			if failures > 0 {
				w.logger.Info("claiming tasks again")
				failures = 0
			}
			if sweep {
				lastSweep = time.Now()
			}
			backlog = n == free
			w.backlog.Store(backlog)
			if backlog {
				signal(w.backlogBegan)
			}
			if backlog && started < n {
				// A limit parked some of the runs: their slots are free
				// again and more is due. Claim at once; waiting for slots
				// to free would wait for running tasks to end, while
				// these slots sat idle. (Parked runs leave the claimable
				// rows, so this does not claim the same rows again.)
				continue
			}
		}
		if backlog || free == 0 {
			// More is due, or nothing could be claimed (every slot busy,
			// or outcomes waiting to be recorded): wait only for slots to
			// free. Let a few free up first when many are busy, so claims
			// come in batches.
			if !w.waitForSlots(ctx, w.slotFreed) {
				return false
			}
			continue
		}
		if untilFinished && w.running.Load() == 0 && w.done.idle() {
			qctx, cancel := context.WithTimeout(ctx, w.opTimeout())
			live, err := w.queries.HasLiveTasks(qctx, w.pool, w.q.Name())
			cancel()
			if err == nil && !live {
				return true
			}
		}
		resetTimer(poll, w.idleWait(ctx))
		select {
		case <-ctx.Done():
			return false
		case <-w.wake:
		case <-w.slotFreed:
		case <-poll.C:
		}
	}
	return false
}

// helpClaim claims alongside the claim loop while a backlog lasts (the last
// claim of either filled every free slot), and sleeps otherwise. Slots it
// reserved but did not fill are handed to the claim loop with a signal: the
// claim loop may be waiting for exactly those.
func (w *Worker) helpClaim(ctx context.Context, tasks *sync.WaitGroup) {
	failures := 0
	for ctx.Err() == nil {
		if !w.backlog.Load() {
			select {
			case <-ctx.Done():
				return
			case <-w.backlogBegan:
			}
			continue
		}
		if !w.waitForSlots(ctx, w.helperSlotFreed) || ctx.Err() != nil {
			return // waitForSlots may see free slots first: no claim after a cancel
		}
		if w.done.backlogged() {
			continue // the next wait lasts until the finisher catches up
		}
		free := w.reserve()
		if free == 0 {
			continue // the claim loop took them
		}
		n, started, err := w.claimReserved(ctx, free, false, tasks)
		if started < free {
			signal(w.slotFreed) // slots given back: the claim loop may wait for them
		}
		if err != nil {
			if !w.backOffAfter(ctx, err, &failures) {
				return
			}
			continue
		}
		failures = 0
		if n < free {
			w.backlog.Store(false)
		}
	}
}

// backOffAfter logs a failed claim and waits before the next try, longer
// after each failure in a row. It reports false when ctx ended.
func (w *Worker) backOffAfter(ctx context.Context, err error, failures *int) bool {
	if ctx.Err() != nil {
		return false
	}
	w.logger.Warn("claim tasks failed; retrying", "error", err, "attempt", *failures+1)
	if !sleep(ctx, w.backoff(*failures)) {
		return false
	}
	*failures++
	return true
}

// reserve counts every free slot as running and returns how many it took;
// claims then fill them. Two loops claim at once: taking the slots in one
// step keeps them from both counting the same free slots.
func (w *Worker) reserve() int {
	limit := int64(w.cfg.Concurrency)
	for {
		r := w.running.Load()
		if r >= limit {
			return 0
		}
		if w.running.CompareAndSwap(r, limit) {
			return int(limit - r)
		}
	}
}

// claimReserved runs one claim of free reserved slots under its own time
// bound. A claim that has started runs to its end even if ctx is cancelled
// meanwhile: tasks the database handed over must be run (drained), not
// left running under a lease nobody renews.
func (w *Worker) claimReserved(ctx context.Context, free int, sweep bool, tasks *sync.WaitGroup) (n, started int, err error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.opTimeout())
	defer cancel()
	n, started, err = w.claim(cctx, free, sweep, tasks)
	if err == nil {
		w.touched()
	}
	return n, started, err
}

// slotsFreed tells both claim loops that a slot is free.
func (w *Worker) slotsFreed() {
	signal(w.slotFreed)
	signal(w.helperSlotFreed)
}

// waitForSlots blocks until enough slots are free to claim a batch worth the
// round trip: a quarter of the concurrency (at most 100), or whatever is
// free 2ms after the first slot frees. freed is the caller's own signal.
func (w *Worker) waitForSlots(ctx context.Context, freed chan struct{}) bool {
	want := int64(min(max(w.cfg.Concurrency/4, 1), 100))
	free := func() int64 { return int64(w.cfg.Concurrency) - w.running.Load() }
	if free() >= want && !w.done.backlogged() {
		return true
	}
	select {
	case <-ctx.Done():
		return false
	case <-freed:
	}
	deadline := time.NewTimer(2 * time.Millisecond)
	defer deadline.Stop()
	for free() < want {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return true
		case <-freed:
		}
	}
	return true
}

// idleWait is how long an idle worker sleeps: until the next future task is
// due (rounded up to the scheduling resolution), at most CheckInterval.
func (w *Worker) idleWait(ctx context.Context) time.Duration {
	wait := w.cfg.CheckInterval
	qctx, cancel := context.WithTimeout(ctx, w.opTimeout())
	defer cancel()
	next, err := w.queries.NextDue(qctx, w.pool, w.q.Name())
	if err != nil {
		return wait // none scheduled, or the database is away: poll
	}
	until := time.Until(next)
	res := w.cfg.SchedulingResolution
	until = (until + res - 1) / res * res
	// A task already due that the claim just before did not take is
	// locked by another transaction (an open cancel or replace, another
	// worker's claim): check again after a resolution step, not at once,
	// or the loop would query back to back while the lock lasts.
	return min(wait, max(until, res))
}

func resetTimer(t *time.Timer, d time.Duration) {
	t.Stop()
	select {
	case <-t.C:
	default:
	}
	t.Reset(d)
}

// claim takes up to free due tasks (and, when sweep is set, tasks whose
// lease lapsed) and starts them. It returns how many it claimed and how
// many of those it started (the rest were parked by a concurrency limit or
// handed back).
//
// The free slots were reserved (counted as running) by the caller, and
// those the claim did not fill are given back when it returns: the batch's
// tasks then start on their own goroutine (see startAll), so the loop can
// send its next claim while they start.
func (w *Worker) claim(ctx context.Context, free int, sweep bool, tasks *sync.WaitGroup) (n, started int, err error) {
	defer func() { w.unreserve(free - started) }()
	var claimed []*execution
	if sweep {
		// The backstops for waiters whose slots freed without a release,
		// and for holds a removed strike could not release.
		if _, err := w.queries.WakeWaiters(ctx, w.pool, w.q.Name()); err != nil {
			return 0, 0, err
		}
		if _, err := w.queries.ReleaseStaleHolds(ctx, w.pool, w.q.Name()); err != nil {
			return 0, 0, err
		}
		mine, generations, _, started := w.inflight.snapshot()
		rows, err := w.queries.ClaimLapsed(ctx, w.pool, db.ClaimLapsedParams{
			Queue: w.q.Name(), Worker: w.cfg.Name, MaxRows: int32(free), LeaseSeconds: w.leaseSeconds(),
			TtlSeconds: w.ttlSeconds(), InFlight: mine, InFlightGenerations: generations,
			InFlightStartedAts: started,
		})
		if err != nil {
			return 0, 0, err
		}
		for _, r := range rows {
			claimed = append(claimed, w.newExecution(r.Key, r.Task, r.Args, r.Generation, r.Attempt, r.RunAt, r.Deliveries, r.StartedAt, r.TraceContext))
		}
	}
	if left := free - len(claimed); left > 0 {
		rows, err := w.claimDue(ctx, left)
		for _, r := range rows {
			if r.StruckBy != nil {
				w.logStruck(ctx, r)
				continue
			}
			claimed = append(claimed, w.newExecution(r.Key, r.Task, r.Args, r.Generation, r.Attempt, r.RunAt, r.Deliveries, r.StartedAt, r.TraceContext))
		}
		if err != nil {
			started, _ = w.admitAndStart(ctx, claimed, tasks) // already claimed: run them
			return len(claimed), started, err
		}
	}
	started, err = w.admitAndStart(ctx, claimed, tasks)
	return len(claimed), started, err
}

// claimUnstruck is ClaimDue through ClaimDueUnstruck: it takes only rows
// that need no judging, so its rows carry no strike.
func (w *Worker) claimUnstruck(ctx context.Context, p db.ClaimDueParams) ([]db.ClaimDueRow, error) {
	got, err := w.queries.ClaimDueUnstruck(ctx, w.pool, db.ClaimDueUnstruckParams{
		Worker: p.Worker, LeaseSeconds: p.LeaseSeconds, Queue: p.Queue,
		AfterRunAt: p.AfterRunAt, AfterSeq: p.AfterSeq, MaxRows: p.MaxRows,
	})
	if err != nil {
		return nil, err
	}
	rows := make([]db.ClaimDueRow, len(got))
	for i, r := range got {
		rows[i] = db.ClaimDueRow{
			Key: r.Key, Task: r.Task, Args: r.Args, Generation: r.Generation, Attempt: r.Attempt,
			RunAt: r.RunAt, Seq: r.Seq, Deliveries: r.Deliveries, StartedAt: r.StartedAt,
			TraceContext: r.TraceContext,
		}
	}
	return rows, nil
}

// claimPosition is where, in claim order (run_at, seq), the last full claim
// stopped while a backlog was being worked off. Both claim loops share it.
type claimPosition struct {
	mu    sync.Mutex
	runAt time.Time
	seq   int64
	since time.Time // the claim from the start of the order it follows on from
	epoch uint64    // w.posEpoch when the claim that set it was sent
	ok    bool
	// judge: the claim that set the position met only rows judged under
	// older strikes than the queue's, so the next ones past it use
	// ClaimDue (see claimDue).
	judge bool
}

func (p *claimPosition) drop() {
	p.mu.Lock()
	p.ok = false
	p.mu.Unlock()
}

// claimDue claims up to n due tasks (and sets aside or cancels those a
// strike matches, returned with StruckBy set). Rows it claimed are
// returned even with an error, from a second statement.
//
// Claimed rows leave their dead entries at the head of the claim index
// until a vacuum removes them, and every scan from the start walks over
// them: late in a large backlog that walk was most of a claim's cost. So
// while claims come back full, each starts past the furthest row a full
// claim took. A task can become due behind that position (added with a
// time in the past, woken from a concurrency limit, released by another
// worker's failed claim, handed back by a worker that could not take its
// concurrency slots), so the position is dropped, and the next claim
// scans from the start, when a claim past it comes back short (the
// backlog is done: the rest is looked for at once), when a task became
// due (a NOTIFY woke the worker, or this worker handed tasks back: both
// advance w.posEpoch), and CheckInterval after the last scan from the
// start. A claim sent while the other loop's is in the database skips the
// rows that one holds locked.
func (w *Worker) claimDue(ctx context.Context, n int) ([]db.ClaimDueRow, error) {
	pos := &w.claimPos
	p := db.ClaimDueParams{
		Queue: w.q.Name(), Worker: w.cfg.Name, MaxRows: int32(n), LeaseSeconds: w.leaseSeconds(),
		TtlSeconds: w.ttlSeconds(),
	}
	pos.mu.Lock()
	epoch := w.posEpoch.Load()
	if pos.ok && (pos.epoch != epoch || time.Since(pos.since) >= w.cfg.CheckInterval) {
		pos.ok = false
	}
	resumed, since, judge := pos.ok, pos.since, pos.ok && pos.judge
	if resumed {
		runAt, seq := pos.runAt, pos.seq
		p.AfterRunAt, p.AfterSeq = &runAt, &seq
	}
	pos.mu.Unlock()
	var (
		rows []db.ClaimDueRow
		err  error
	)
	if resumed && !judge || !resumed && w.backlog.Load() {
		// Going on through a backlog, past the position or (after a wake-up,
		// or CheckInterval on) from the start: the plain statement first.
		// It comes back short when its rows include some judged under
		// older strikes than the queue's (it leaves those) or the backlog
		// is done; ClaimDue, from the same place, judges and claims what
		// it left. If the plain one claimed nothing and ClaimDue
		// something, the backlog here is of rows to judge (the strikes
		// changed after they were added): the claims past the position
		// this claim sets go straight to ClaimDue. An idle worker's claims
		// (no backlog) go straight to ClaimDue too: they come back short,
		// and one statement is enough.
		rows, err = w.claimUnstruck(ctx, p)
		if err == nil && len(rows) < n {
			p.MaxRows = int32(n - len(rows))
			var more []db.ClaimDueRow
			more, err = w.queries.ClaimDue(ctx, w.pool, p)
			judge = len(rows) == 0 && len(more) > 0
			rows = append(rows, more...)
		}
	} else {
		rows, err = w.queries.ClaimDue(ctx, w.pool, p)
	}
	if err != nil {
		// Its rows are due again, perhaps behind a position the other
		// loop's claim is about to set: that one must not be kept either.
		// Rows the plain statement claimed before are returned: they run.
		w.posEpoch.Add(1)
		return rows, err
	}
	if len(rows) < n {
		pos.drop()
		if !resumed {
			return rows, nil
		}
		p.AfterRunAt, p.AfterSeq, p.MaxRows = nil, nil, int32(n-len(rows))
		more, err := w.queries.ClaimDue(ctx, w.pool, p)
		if err != nil {
			w.posEpoch.Add(1) // as above: its rows are due again
		}
		return append(rows, more...), err
	}
	// A full batch: more is probably due past its last row.
	runAt, seq := rows[0].RunAt, rows[0].Seq
	for _, r := range rows[1:] {
		if c := r.RunAt.Compare(runAt); c > 0 || c == 0 && r.Seq > seq {
			runAt, seq = r.RunAt, r.Seq
		}
	}
	if !resumed {
		since = time.Now()
	}
	pos.mu.Lock()
	defer pos.mu.Unlock()
	if pos.ok && pos.epoch > epoch {
		return rows, nil // set by a claim sent after a wake-up: keep it
	}
	if pos.ok && pos.epoch == epoch {
		// The other loop's claim set it meanwhile: keep the further one.
		if c := runAt.Compare(pos.runAt); c < 0 || c == 0 && seq < pos.seq {
			return rows, nil
		}
		if pos.since.Before(since) {
			since = pos.since
		}
	}
	pos.runAt, pos.seq, pos.since, pos.epoch, pos.ok = runAt, seq, since, epoch, true
	pos.judge = judge
	return rows, nil
}

// unreserve gives back n slots reserved for a claim that did not fill them.
// It does not signal slotFreed: the loop giving them back is the one that
// would wake (a signal here had an idle worker claim again at once, in a
// loop); the helper signals the claim loop itself (see helpClaim).
func (w *Worker) unreserve(n int) {
	if n > 0 {
		w.running.Add(int64(-n))
	}
}

// admitAndStart starts the claimed runs that may start, then hands back
// those whose concurrency slots could not be taken. Starting first matters:
// a run not yet started has no lease renewal, and the hand-back may take
// as long as the claim did.
//
// It returns how many runs it started; their slots must have been reserved.
func (w *Worker) admitAndStart(ctx context.Context, claimed []*execution, tasks *sync.WaitGroup) (int, error) {
	if len(claimed) == 0 {
		return 0, nil
	}
	start, handBack, err := w.admit(ctx, claimed)
	w.startAll(start, tasks)
	if len(handBack) == 0 {
		return len(start), nil
	}
	if uerr := w.unclaim(ctx, handBack); uerr != nil {
		w.logger.Warn("taking concurrency slots failed, and so did handing the tasks back; they will be redelivered when their leases lapse",
			"error", err, "hand_back_error", uerr, "tasks", len(handBack))
	} else {
		w.logger.Warn("taking concurrency slots failed; the tasks were handed back and will be claimed again",
			"error", err, "tasks", len(handBack))
	}
	return len(start), fmt.Errorf("taking concurrency slots: %w", err)
}

// admit takes the concurrency slots the claimed runs need and returns those
// that may start. A run whose limit is full has been parked by the database
// and is left out; it is woken when a slot frees. When the slots cannot be
// taken, the limited runs are returned to be handed back, with the error —
// unless the error is one a request's own values cause (see runFault): then
// each limited run asks alone, and a run whose own request fails that way
// starts only to fail with the error, so one bad run cannot hold up the
// rest, while the others are handed back or start.
func (w *Worker) admit(ctx context.Context, claimed []*execution) (start, handBack []*execution, err error) {
	var limited []*execution
	start = make([]*execution, 0, len(claimed))
	for _, x := range claimed {
		reg := w.reg.lookup(x.Name)
		if reg == nil || len(reg.policy.Concurrency) == 0 {
			start = append(start, x)
			continue
		}
		slots, err := limitKeys(x.Name, reg.policy.Concurrency, x.args, reg.layout)
		if err != nil {
			x.preErr = err
			start = append(start, x)
			continue
		}
		x.slots, x.runID = slots, newRunID()
		limited = append(limited, x)
	}
	if len(limited) == 0 {
		return claimed, nil, nil
	}
	granted, err := w.takeSlots(ctx, limited)
	if err == nil {
		return append(start, granted...), nil, nil
	}
	if !runFault(err) {
		return start, limited, err
	}
	w.logger.Warn("taking concurrency slots failed; asking for each task alone", "error", err, "tasks", len(limited))
	var firstErr error
	for _, x := range limited {
		granted, err := w.takeSlots(ctx, []*execution{x})
		switch {
		case err == nil:
			start = append(start, granted...)
		case runFault(err):
			x.preErr = fmt.Errorf("taking concurrency slots: %w", err)
			x.slots, x.runID = nil, 0
			start = append(start, x)
		default:
			handBack = append(handBack, x)
			firstErr = cmp.Or(firstErr, err)
		}
	}
	return start, handBack, firstErr
}

// takeSlots asks for the slots of limited runs in one call and returns the
// runs granted; the others were parked.
func (w *Worker) takeSlots(ctx context.Context, runs []*execution) ([]*execution, error) {
	p := db.AcquireSlotsParams{Queue: w.q.Name(), LeaseSeconds: w.leaseSeconds()}
	for _, x := range runs {
		for _, s := range x.slots {
			p.Tasks = append(p.Tasks, x.Key)
			p.Generations = append(p.Generations, x.generation)
			p.StartedAts = append(p.StartedAts, x.started)
			p.RunIds = append(p.RunIds, x.runID)
			p.LimitKeys = append(p.LimitKeys, s.key)
			p.Maxes = append(p.Maxes, int32(s.max))
		}
	}
	parked, err := w.queries.AcquireSlots(ctx, w.pool, p)
	if err != nil {
		return nil, err
	}
	if len(parked) == 0 {
		return runs, nil
	}
	waiting := make(map[string]string, len(parked))
	for _, r := range parked {
		waiting[r.Key] = r.WaitingOn
	}
	return slices.DeleteFunc(runs, func(x *execution) bool {
		key, ok := waiting[x.Key]
		if ok && w.logger.Enabled(ctx, slog.LevelDebug) {
			w.logger.Debug("task waits for a concurrency slot", "task", x.Name, "key", x.Key, "limit", key)
		}
		return ok
	}), nil
}

// runFault reports whether a failed request's own values caused the error
// (invalid data, such as a key with a NUL character, or a violated
// constraint), so that asking again cannot help. Anything else (the connection, the
// server, a timeout, a deadlock, permissions, a read-only server) is about
// the moment or the whole database: the request's runs are handed back.
func runFault(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return false
	}
	return strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "23")
}

// unclaim hands back runs whose concurrency slots could not be taken: they
// become due again (their delivery not counted) rather than wait a whole
// redelivery timeout, and any slots the failed request took after all are
// released (see shadows.unclaim_runs). It gets its own time bound: the
// claim's may be what ran out.
func (w *Worker) unclaim(ctx context.Context, runs []*execution) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.opTimeout())
	defer cancel()
	slices.SortFunc(runs, func(a, b *execution) int { return strings.Compare(a.Key, b.Key) })
	p := db.UnclaimParams{Queue: w.q.Name(), Worker: w.cfg.Name, TtlSeconds: w.ttlSeconds()}
	for _, x := range runs {
		p.Keys = append(p.Keys, x.Key)
		p.Generations = append(p.Generations, x.generation)
		p.StartedAts = append(p.StartedAts, x.started)
		for _, s := range x.slots {
			p.LimitKeys = append(p.LimitKeys, s.key)
			p.RunIds = append(p.RunIds, x.runID)
		}
	}
	waiting, err := w.queries.Unclaim(ctx, w.pool, p)
	if err != nil {
		return err
	}
	// The runs are due again where they were in claim order, behind the
	// position claims resume from.
	w.posEpoch.Add(1)
	if len(waiting) > 0 {
		if _, err := w.queries.WakeFreed(ctx, w.pool, db.WakeFreedParams{Queue: p.Queue, LimitKeys: waiting}); err != nil {
			w.logger.Warn("waking tasks waiting for concurrency slots failed; the sweep will wake them", "error", err)
		}
	}
	return nil
}

// newRunID draws the id a run's concurrency slots are held under: positive
// and random, so two runs never share one in practice (a collision is as
// likely as two equal random 63-bit numbers among the runs holding slots
// of one key at once). Task keys and generations are no such names: a
// task whose record was deleted starts again at generation 1.
func newRunID() int64 { return rand.Int64N(math.MaxInt64) + 1 }

// logStruck reports a due task that a strike cancelled or set aside.
func (w *Worker) logStruck(ctx context.Context, r db.ClaimDueRow) {
	if !r.Held {
		w.tel.Struck.Add(ctx, 1, w.attrs(r.Task))
	}
	if r.Held {
		w.logger.Info("task held by a strike", "task", r.Task, "key", r.Key, "strike", *r.StruckBy)
		return
	}
	w.logger.Warn("🗙 task struck: cancelled", "task", r.Task, "key", r.Key, "strike", *r.StruckBy)
}

func (w *Worker) newExecution(key, task string, args json.RawMessage, generation int64, attempt int32,
	runAt time.Time, deliveries int32, startedAt *time.Time, traceContext json.RawMessage) *execution {
	x := &execution{
		Info: Info{
			Key:         key,
			Name:        task,
			Attempt:     int(attempt),
			When:        runAt,
			Redelivered: deliveries > 1,
			Worker:      w.cfg.Name,
			Queue:       w.q,
		},
		args:         args,
		generation:   generation,
		deliveries:   deliveries,
		w:            w,
		traceContext: traceContext,
	}
	if startedAt != nil {
		x.started = *startedAt
	}
	return x
}

// decodeSafely runs decode, turning a panic (a custom UnmarshalJSON) into
// the task's decode error: it runs on the claim goroutine, where a panic
// would take the whole worker down, and then every worker the task is
// redelivered to.
func decodeSafely(decode func(json.RawMessage) (any, error), args json.RawMessage) (v any, err error) {
	defer func() {
		if p := recover(); p != nil {
			v, err = nil, fmt.Errorf("panic: %v", p)
		}
	}()
	return decode(args)
}

// startAll registers every claimed task as in flight before starting any,
// so a cancel notification that comes later finds its task; one that came
// between the claim's commit and now was kept and is applied by
// inflightSet.add.
// The tasks' slots are already counted in w.running (reserved by the
// claim). Decoding the arguments and starting the handlers happens on a
// goroutine of its own, so that the claim loop is free to claim again
// meanwhile: the two used to take turns, and the database sat idle while
// a batch started.
func (w *Worker) startAll(claimed []*execution, tasks *sync.WaitGroup) {
	if len(claimed) == 0 {
		return
	}
	runs := make([]*inflight, len(claimed))
	for i, x := range claimed {
		x.reg = w.reg.lookup(x.Name)
		runs[i] = w.inflight.add(x)
	}
	tasks.Go(func() {
		for _, f := range runs {
			x := f.x
			if x.reg != nil && x.reg.decode != nil && x.preErr == nil {
				x.decoded, x.decodeErr = decodeSafely(x.reg.decode, x.args)
			}
			tasks.Go(func() {
				defer func() {
					w.running.Add(-1)
					w.slotsFreed()
				}()
				w.execute(f)
			})
		}
	})
}
