package worker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shadows-go/shadows/db"
	"github.com/shadows-go/shadows/internal/notify"
	"github.com/shadows-go/shadows/internal/telemetry"
)

// finishBatch caps the outcomes recorded per statement.
const finishBatch = 1000

// finisher records task outcomes in batches: whatever ended while the
// previous batch was being written goes out in the next single statement.
type finisher struct {
	w       *Worker
	kick    chan struct{}
	mu      sync.Mutex
	pending []outcome
	// spare is the whole array of the last batch written successfully,
	// emptied, for pending to fill next (nil after a failed write). The two
	// arrays take turns and keep their capacity, so outcomes are appended
	// into room that is already there: regrowing pending for every batch
	// was a fifth of the worker's allocations and, in growslice's copies,
	// about 5% of its CPU in a burn. Only while more than finishBatch
	// outcomes wait are the ones beyond a batch copied across.
	spare    []outcome
	writing  bool
	flushMu  sync.Mutex // held while writing; lease renewal takes it too
	failures int
}

func newFinisher(w *Worker) *finisher {
	return &finisher{w: w, kick: make(chan struct{}, 1)}
}

func (f *finisher) push(o outcome) {
	o.makeStorable()
	f.mu.Lock()
	f.pending = append(f.pending, o)
	f.mu.Unlock()
	signal(f.kick)
}

// maxUnrecorded bounds the outcomes waiting to be recorded; past it the
// worker stops claiming, so memory stays bounded when the database records
// outcomes more slowly than handlers produce them.
const maxUnrecorded = 2 * finishBatch

func (f *finisher) backlogged() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pending) >= maxUnrecorded
}

// idle reports whether every outcome handed over has been recorded.
func (f *finisher) idle() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pending) == 0 && !f.writing
}

func (f *finisher) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
		}
		for f.flush(ctx) {
		}
	}
}

// drain records everything pending. If the database stays unreachable for
// a whole redelivery timeout it gives up: the leases lapse and the tasks
// run again elsewhere, as after a crash.
func (f *finisher) drain() {
	ctx, cancel := context.WithTimeout(context.Background(), f.w.cfg.RedeliveryTimeout)
	defer cancel()
	for !f.idle() && ctx.Err() == nil {
		if !f.flush(ctx) {
			sleep(ctx, time.Millisecond) // the run loop is writing a batch
		}
	}
	if !f.idle() {
		f.w.logger.Error("could not record task outcomes before stopping; they will be redelivered")
	}
}

// flush writes one batch and reports whether there may be more to write.
func (f *finisher) flush(ctx context.Context) bool {
	f.mu.Lock()
	if f.writing { // another goroutine is writing; it will go on
		f.mu.Unlock()
		return false
	}
	n := min(len(f.pending), finishBatch)
	if n == 0 {
		f.mu.Unlock()
		return false
	}
	// The batch keeps its array to itself while it is written: what is
	// left over, and everything pushed meanwhile, goes to the other one.
	batch := f.pending[:n:n]
	whole := f.pending
	next := f.spare
	if next == nil {
		next = make([]outcome, 0, cap(whole))
	}
	f.pending, f.spare = append(next, f.pending[n:]...), nil
	f.writing = true
	f.mu.Unlock()
	// Still "writing" until the batch is wholly dealt with (its runs
	// recorded and no longer in flight): drain (a graceful stop) waits for
	// the slots to be released before the services' context is cancelled.
	written, err := f.writeAll(ctx, batch)
	f.mu.Lock()
	f.writing = false
	// failures is shared with drain, which may flush on another goroutine
	// while this one backs off.
	failures := f.failures
	if err != nil {
		f.pending = append(batch[written:], f.pending...)
		f.failures++
	} else {
		f.failures = 0
	}
	if err == nil {
		clear(whole) // no outcome stays reachable from the spare array
		f.spare = whole[:0]
	}
	f.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		f.w.logger.Warn("recording task outcomes failed; retrying", "error", err, "tasks", n)
		return sleep(ctx, f.w.backoff(failures))
	}
	f.w.slotsFreed() // a backlogged claim loop may go on
	return true
}

// writeAll writes a batch and returns how many of its outcomes, from the
// start, are recorded. When the server refuses the batch for a value one
// of its outcomes holds (see runFault), the outcomes are written one by
// one, and one refused alone is recorded as a failed run with the server's
// reason instead: a single bad outcome must hold back neither the others
// nor, retried forever, itself (its run would stay running, renewed, and
// the worker would stop claiming once outcomes piled up).
//
// The recorded runs leave the in-flight set before lease renewal, which
// is serialised with the writes, may look at it again: it would renew
// their released slots and warn that they had lapsed.
func (f *finisher) writeAll(ctx context.Context, batch []outcome) (written int, err error) {
	f.flushMu.Lock()
	defer f.flushMu.Unlock()
	defer func() {
		for _, o := range batch[:written] {
			f.w.inflight.remove(o.key)
		}
	}()
	if err = f.write(ctx, batch); err == nil {
		return len(batch), nil
	}
	if !runFault(err) || ctx.Err() != nil {
		return 0, err
	}
	f.w.logger.Warn("the database refused a batch of task outcomes; recording them one by one", "error", err, "tasks", len(batch))
	for i, o := range batch {
		err := f.write(ctx, batch[i:i+1])
		if err != nil && runFault(err) {
			f.w.logger.Error("the database refused a task's outcome; recording the run as failed", "key", o.key.key, "error", err)
			batch[i] = o.unstorable(err)
			err = f.write(ctx, batch[i:i+1])
		}
		if err != nil {
			return i, err
		}
	}
	return len(batch), nil
}

func (f *finisher) write(ctx context.Context, batch []outcome) error {
	n := len(batch)
	// Lock rows in key order, as lease renewal does, so the two never
	// deadlock. Sorting indexes, not the outcomes themselves, saves moving
	// large structs around (it showed in profiles).
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(batch[a].key.key, batch[b].key.key) })
	if plainSuccesses(batch) {
		return f.complete(ctx, batch, order)
	}
	p := db.FinishTasksParams{
		Queue:        f.w.q.Name(),
		Keys:         make([]string, n),
		Generations:  make([]int64, n),
		States:       make([]string, n),
		Errors:       make([]string, n),
		Results:      make([]string, n),
		NextRunAts:   make([]time.Time, n),
		NextArgs:     make([]string, n),
		NextAttempts: make([]int32, n),
		Deliveries:   make([]int32, n),
		StartedAts:   make([]time.Time, n),
		TtlSeconds:   f.w.ttlSeconds(),
	}
	for i, j := range order {
		o := &batch[j]
		p.Keys[i], p.Generations[i] = o.key.key, o.key.generation
		p.States[i], p.Errors[i], p.Results[i] = o.state, o.err, string(o.result)
		p.NextRunAts[i], p.NextArgs[i], p.NextAttempts[i] = o.nextAt, string(o.nextArgs), int32(o.nextAttempt)
		p.Deliveries[i], p.StartedAts[i] = o.deliveries, o.key.startedAt()
	}
	return f.record(ctx, batch, func(ctx context.Context, tx db.DBTX) (int64, error) {
		row, err := f.w.queries.FinishTasks(ctx, tx, p)
		return row.N, err
	})
}

// record runs one outcome statement for a batch (its caller holds
// flushMu, serialising it with lease renewal, which locks the same rows),
// and counts the outcomes it did not record: runs whose task was replaced,
// or whose lease was taken over, meanwhile. When runs of the batch hold concurrency slots, the slots are
// released in the same transaction: a slot never outlives the record of
// its run's end, and a rescheduled run never finds its predecessor's slot
// still held. Tasks waiting on the freed keys are woken after the commit.
func (f *finisher) record(ctx context.Context, batch []outcome, run func(context.Context, db.DBTX) (int64, error)) error {
	ctx, cancel := context.WithTimeout(ctx, f.w.opTimeout())
	defer cancel()
	var release db.ReleaseSlotsParams
	for _, o := range batch {
		for _, slot := range o.slots {
			release.LimitKeys = append(release.LimitKeys, slot.key)
			release.RunIds = append(release.RunIds, o.runID)
		}
	}
	var recorded int64
	var waiting []string
	var err error
	if len(release.LimitKeys) == 0 {
		recorded, err = run(ctx, f.w.pool)
	} else {
		release.Queue = f.w.q.Name()
		err = pgx.BeginFunc(ctx, f.w.pool, func(tx pgx.Tx) error {
			var err error
			if recorded, err = run(ctx, tx); err != nil {
				return err
			}
			waiting, err = f.w.queries.ReleaseSlots(ctx, tx, release)
			return err
		})
	}
	if err != nil {
		return err
	}
	if recorded < int64(len(batch)) {
		f.w.tel.Superseded.Add(ctx, int64(len(batch))-recorded, f.w.tel.Attrs(telemetry.WorkerKey.String(f.w.cfg.Name)))
	}
	if len(waiting) > 0 {
		_, err := f.w.queries.WakeFreed(ctx, f.w.pool, db.WakeFreedParams{Queue: release.Queue, LimitKeys: waiting})
		if err != nil && ctx.Err() == nil {
			f.w.logger.Warn("waking tasks waiting for concurrency slots failed; the sweep will wake them", "error", err)
		}
	}
	return nil
}

// plainSuccesses reports whether every outcome is a success with no result
// (most batches), which CompleteTasks records more cheaply.
func plainSuccesses(batch []outcome) bool {
	for _, o := range batch {
		if o.state != stateCompleted || o.err != "" || len(o.result) > 0 {
			return false
		}
	}
	return true
}

// complete records a batch of plain successes, in the given order.
func (f *finisher) complete(ctx context.Context, batch []outcome, order []int) error {
	n := len(batch)
	p := db.CompleteTasksParams{
		Queue:       f.w.q.Name(),
		Keys:        make([]string, n),
		Generations: make([]int64, n),
		Deliveries:  make([]int32, n),
		StartedAts:  make([]time.Time, n),
		TtlSeconds:  f.w.ttlSeconds(),
	}
	for i, j := range order {
		o := &batch[j]
		p.Keys[i], p.Generations[i], p.Deliveries[i], p.StartedAts[i] = o.key.key, o.key.generation, o.deliveries, o.key.startedAt()
	}
	return f.record(ctx, batch, func(ctx context.Context, tx db.DBTX) (int64, error) {
		row, err := f.w.queries.CompleteTasks(ctx, tx, p)
		return row.N, err
	})
}

func (w *Worker) ttlSeconds() float64 {
	if ttl := w.q.Config().ExecutionTTL; ttl > 0 {
		return ttl.Seconds()
	}
	return 0
}

// listen keeps a dedicated connection listening for due tasks and cancels,
// reconnecting when it is lost.
func (w *Worker) listen(ctx context.Context) {
	for failures := 0; ctx.Err() == nil; {
		connected, err := w.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if connected {
			failures = 0 // a connection that was lost, not one that failed: start the back-off afresh
		}
		w.logger.Warn("notification listener lost its connection; reconnecting", "error", err)
		if !sleep(ctx, w.backoff(failures)) {
			return
		}
		failures++
	}
}

// connect opens a connection of the worker's own, outside the pool, as the
// pool would open one (its BeforeConnect and AfterConnect hooks run: they
// may set rotating credentials).
func (w *Worker) connect(ctx context.Context) (*pgx.Conn, error) {
	pc := w.pool.Config()
	cc := pc.ConnConfig.Copy()
	if pc.BeforeConnect != nil {
		if err := pc.BeforeConnect(ctx, cc); err != nil {
			return nil, err
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, err
	}
	if pc.AfterConnect != nil {
		if err := pc.AfterConnect(ctx, conn); err != nil {
			closeConn(conn)
			return nil, err
		}
	}
	return conn, nil
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn.Close(ctx)
}

func (w *Worker) listenOnce(ctx context.Context) (connected bool, err error) {
	conn, err := w.connect(ctx)
	if err != nil {
		return false, err
	}
	defer closeConn(conn)
	if _, err := conn.Exec(ctx, "LISTEN "+notify.Ready+"; LISTEN "+notify.Cancel); err != nil {
		return false, err
	}
	// Anything may have become due, or been cancelled, while nobody
	// listened: look for due tasks and check the running ones now.
	w.posEpoch.Add(1)
	signal(w.wake)
	signal(w.renewNow)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return true, err
		}
		switch n.Channel {
		case notify.Ready:
			if n.Payload == w.q.Name() {
				w.posEpoch.Add(1) // it may be due behind the claim position
				signal(w.wake)
			}
		case notify.Cancel:
			if p, ok := notify.ParseCancel(n.Payload); ok && p.Queue == w.q.Name() {
				switch {
				case p.Generation != 0 && p.Started != 0:
					w.inflight.cancelExact(inflightKey{p.Key, p.Generation, p.Started})
				case p.Below == 0:
					w.inflight.cancelRun(p.Key, p.Generation)
				}
				if p.Below != 0 {
					w.inflight.cancelBelow(p.Key, p.Below)
				}
			}
		}
	}
}

// renewLeases extends the leases of the tasks in flight every quarter of the
// redelivery timeout, and whenever the listener (re)connects, and cancels
// those a cancel asked to stop: the backstop for a cancel notification sent
// while nobody listened.
//
// Renewals have a connection of their own, opened when there is something
// to renew: handlers that use the worker's pool, and hold all of its
// connections, once kept renewals waiting until the leases lapsed and other
// workers ran the tasks again.
func (w *Worker) renewLeases(ctx context.Context) {
	every := w.cfg.RedeliveryTimeout / 4
	t := time.NewTicker(every)
	defer t.Stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			closeConn(conn)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.renewNow:
		}
		for failures := 0; ctx.Err() == nil; failures++ {
			err := w.renewOnce(ctx, w.opTimeout(), &conn)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			w.logger.Warn("renewing task leases failed; retrying", "error", err)
			if !sleep(ctx, min(w.backoff(failures), every/4)) {
				return
			}
		}
	}
}

// renewOnce extends the leases of the tasks in flight, within limit, over
// *conn (opened if nil, closed and set to nil after an error). It is
// serialised with recording outcomes: both lock the same rows.
func (w *Worker) renewOnce(ctx context.Context, limit time.Duration, conn **pgx.Conn) (err error) {
	w.done.flushMu.Lock()
	defer w.done.flushMu.Unlock()
	keys, gens, deliveries, started := w.inflight.snapshot()
	if len(keys) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	if *conn == nil {
		if *conn, err = w.connect(ctx); err != nil {
			return err
		}
	}
	defer func() {
		if err != nil {
			closeConn(*conn)
			*conn = nil
		}
	}()
	cancelled, err := w.queries.RenewLeases(ctx, *conn, db.RenewLeasesParams{
		Queue: w.q.Name(), Keys: keys, Generations: gens, Deliveries: deliveries, StartedAts: started,
		Worker: w.cfg.Name, LeaseSeconds: w.leaseSeconds(),
	})
	if err != nil {
		return err
	}
	for _, r := range cancelled {
		w.inflight.cancelExact(inflightKey{r.Key, r.Generation, r.StartedAt.UnixMicro()})
	}
	if held := w.inflight.heldSlots(); len(held.LimitKeys) > 0 {
		// Every holder, replaced or not: its slots count while it runs.
		held.Queue, held.LeaseSeconds = w.q.Name(), w.leaseSeconds()
		lost, err := w.queries.RenewSlots(ctx, *conn, held)
		if err != nil {
			return err
		}
		if lost > 0 {
			// Their leases lapsed before this renewal (the database was out
			// of reach for a whole redelivery timeout) and a sweep freed
			// them: like the task leases, they are past saving.
			w.logger.Warn("concurrency slots lapsed while their tasks ran; those runs no longer count against their limits",
				"slots", lost)
		}
	}
	return nil
}

// heartbeat announces the worker (the workers table, and Healthy), and
// signals answered after every heartbeat the database took.
func (w *Worker) heartbeat(ctx context.Context, answered chan struct{}) {
	t := time.NewTicker(w.q.Config().HeartbeatInterval)
	defer t.Stop()
	names := w.reg.Names()
	for {
		hctx, cancel := context.WithTimeout(ctx, w.opTimeout())
		err := w.queries.Heartbeat(hctx, w.pool, db.HeartbeatParams{Queue: w.q.Name(), Name: w.cfg.Name, Tasks: names})
		cancel()
		if err != nil && ctx.Err() == nil {
			w.logger.Warn("heartbeat failed", "error", err)
		}
		if err == nil {
			w.touched()
			signal(answered)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// collectGarbageEvery deletes expired execution and admission records and
// workers that stopped announcing themselves: once as soon as the first
// heartbeat went through, then now and then. It has a goroutine of its own:
// a large expired backlog takes many statements to clear, and heartbeats
// (the worker's health) must not wait for them. It sets collected once a
// collection has run to its end (see finalCollection).
func (w *Worker) collectGarbageEvery(ctx context.Context, answered <-chan struct{}, collected *atomic.Bool) {
	t := time.NewTicker(min(max(w.q.Config().ExecutionTTL/4, time.Second), 30*time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-answered:
			answered = nil // only the first one: then the ticker decides
		case <-t.C:
		}
		// Skipped while the database is out of reach.
		if time.Since(time.Unix(0, w.contact.Load())) <= 2*w.q.Config().HeartbeatInterval && w.collectGarbage(ctx) {
			collected.Store(true)
		}
	}
}

// finalCollection bounds the collection a run that finished its queue
// makes on its way out when none ran to its end while it lasted: a
// short `shadows worker --until-finished` run, repeated, must not leave
// expired records behind for good.
const finalCollection = 5 * time.Second

const gcBatch = 1000

// collectGarbage deletes expired records, expired admission marks and
// long-stale workers, and reports whether it got through all of them.
// Each statement has a time limit of its own.
func (w *Worker) collectGarbage(ctx context.Context) (done bool) {
	step := func(what string, do func(context.Context) error) bool {
		dctx, cancel := context.WithTimeout(ctx, w.opTimeout())
		defer cancel()
		err := do(dctx)
		if err != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) {
			w.logger.Warn(what, "error", err)
		}
		return err == nil
	}
	for n := int64(gcBatch); n == gcBatch; {
		if !step("deleting expired records failed", func(ctx context.Context) (err error) {
			n, err = w.queries.DeleteExpired(ctx, w.pool, gcBatch)
			return err
		}) {
			return false
		}
	}
	admissions := step("deleting expired admission records failed", func(ctx context.Context) error {
		return w.queries.DeleteExpiredAdmissions(ctx, w.pool)
	})
	stale := 10 * w.q.WorkerStaleAfter()
	workers := step("deleting stale workers failed", func(ctx context.Context) error {
		_, err := w.queries.DeleteStaleWorkers(ctx, w.pool, db.DeleteStaleWorkersParams{Queue: w.q.Name(), StaleSeconds: stale.Seconds()})
		return err
	})
	return admissions && workers
}
