package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/shadows-go/shadows/db"
	"github.com/shadows-go/shadows/internal/pgtext"
	"github.com/shadows-go/shadows/internal/telemetry"
)

// AddOpts are the optional parts of an add.
type AddOpts struct {
	// When the task is due. Zero, or any time not in the future, means now.
	When time.Time
	// Key identifies the task: adding a key that is scheduled, queued or
	// running changes nothing. Empty means a fresh UUIDv7.
	Key string
}

// Entry is one task of an [Queue.AddMany] batch.
type Entry struct {
	Args Args
	When time.Time
	Key  string
}

// encodeArgs returns the task name and JSON object of args.
func encodeArgs(args Args) (string, []byte, error) {
	if args == nil {
		return "", nil, fmt.Errorf("%w: nil", ErrInvalidArgs)
	}
	name := args.TaskName()
	if name == "" || len(name) > MaxNameLength {
		return "", nil, fmt.Errorf("%w: task name %q must be 1 to %d bytes", ErrInvalidArgs, name, MaxNameLength)
	}
	if err := validateText(name); err != nil {
		return "", nil, fmt.Errorf("%w: task name %q %w", ErrInvalidArgs, name, err)
	}
	raw, err := json.Marshal(args)
	if err != nil {
		return "", nil, fmt.Errorf("%w: task %s: %w", ErrInvalidArgs, name, err)
	}
	if len(raw) == 0 || raw[0] != '{' {
		return "", nil, fmt.Errorf("%w: task %s: arguments must encode as a JSON object, got %.40s", ErrInvalidArgs, name, raw)
	}
	if err := pgtext.CheckJSON(raw); err != nil { // a NUL in a string, say
		return "", nil, fmt.Errorf("%w: task %s: arguments encode as %w", ErrInvalidArgs, name, err)
	}
	return name, raw, nil
}

func whenParam(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// Add stores a task to run at opts.When under opts.Key (both optional; nil
// opts means now and a fresh key). If the key is live — scheduled, queued or
// running — nothing changes and the returned Execution's Disposition is
// DispositionAlreadyScheduled; a key whose record is terminal is reused. If
// a strike matches the task, nothing is stored, a warning is logged and the
// Disposition is DispositionStruck.
func (q *Queue) Add(ctx context.Context, args Args, opts *AddOpts) (*Execution, error) {
	return q.add(ctx, q.pool, args, opts, false)
}

// AddTx is Add inside the caller's transaction: the task exists, and workers
// are woken, only if tx commits.
func (q *Queue) AddTx(ctx context.Context, tx pgx.Tx, args Args, opts *AddOpts) (*Execution, error) {
	return q.add(ctx, tx, args, opts, false)
}

// Replace stores a task under key at when, overwriting whatever the key
// holds. A scheduled or queued copy never runs; a running copy finishes but
// can no longer change the record. opts.Key and opts.When are required.
func (q *Queue) Replace(ctx context.Context, args Args, opts AddOpts) (*Execution, error) {
	return q.replace(ctx, q.pool, args, opts)
}

// ReplaceTx is Replace inside the caller's transaction.
func (q *Queue) ReplaceTx(ctx context.Context, tx pgx.Tx, args Args, opts AddOpts) (*Execution, error) {
	return q.replace(ctx, tx, args, opts)
}

func (q *Queue) replace(ctx context.Context, conn dbtx, args Args, opts AddOpts) (*Execution, error) {
	if opts.Key == "" {
		return nil, fmt.Errorf("replace: %w: a key is required", ErrInvalidKey)
	}
	if opts.When.IsZero() {
		return nil, fmt.Errorf("replace %q: a time is required", opts.Key)
	}
	return q.add(ctx, conn, args, &opts, true)
}

func (q *Queue) add(ctx context.Context, conn dbtx, args Args, opts *AddOpts, replace bool) (ex *Execution, err error) {
	if opts == nil {
		opts = &AddOpts{}
	}
	spanName := "shadows.add"
	if replace {
		spanName = "shadows.replace"
	}
	ctx, span := q.tel.StartSpan(ctx, spanName)
	defer func() {
		if ex != nil {
			span.SetAttributes(telemetry.TaskKey.String(ex.Task), attribute.String("shadows.key", ex.Key),
				attribute.String("shadows.disposition", ex.Disposition.String()))
			q.count(ctx, ex, replace)
		}
		telemetry.EndSpan(span, err)
	}()
	name, raw, err := encodeArgs(args)
	if err != nil {
		return nil, err
	}
	key := opts.Key
	if key == "" {
		key = newKey()
	} else if err := validateKey(key); err != nil {
		return nil, err
	}
	e := &Execution{
		Queue:       q.cfg.Name,
		Key:         key,
		Task:        name,
		Args:        raw,
		Disposition: DispositionScheduled,
		Attempt:     1,
	}
	p := db.AddTaskParams{Queue: q.cfg.Name, Key: key, Task: name, Args: raw, RunAt: whenParam(opts.When),
		TraceContext: telemetry.Inject(ctx)}
	// An add that meets a live key reads the live task in a second
	// statement; when that task ended and its record went in between (no
	// record lifetime), the add is tried again: the key is free now.
	for tries := 1; ; tries++ {
		var row db.AddTaskRow
		if replace {
			var r db.ReplaceTaskRow
			r, err = q.queries.ReplaceTask(ctx, conn, db.ReplaceTaskParams(p))
			row = db.AddTaskRow(r)
		} else {
			row, err = q.queries.AddTask(ctx, conn, p)
		}
		if err != nil {
			return nil, fmt.Errorf("add %s %q: %w", name, key, err)
		}
		switch {
		case row.StruckBy != "":
			e.struck(q, row.StruckBy)
			return e, nil
		case row.Generation == nil:
			live, err := q.alreadyScheduled(ctx, conn, e)
			if errors.Is(err, pgx.ErrNoRows) && tries < 3 {
				continue
			}
			return live, err
		}
		e.fillAdded(*row.Generation, *row.RunAt, *row.CreatedAt, row.Notified)
		return e, nil
	}
}

// tally counts adds of one task name by disposition, for the metrics.
type tally struct{ added, scheduled, struck, replaced int64 }

func (t *tally) note(e *Execution, replace bool) {
	switch e.Disposition {
	case DispositionStruck:
		t.struck++
		return
	case DispositionScheduled:
		t.scheduled++
	}
	t.added++
	if replace {
		t.replaced++
	}
}

// record adds a tally of task's adds to the metrics.
func (q *Queue) record(ctx context.Context, task string, t *tally) {
	attrs := q.tel.Attrs(telemetry.TaskKey.String(task))
	for _, c := range []struct {
		counter metric.Int64Counter
		n       int64
	}{
		{q.tel.Struck, t.struck}, {q.tel.Scheduled, t.scheduled}, {q.tel.Added, t.added},
		{q.tel.Replaced, t.replaced},
		{q.tel.Cancelled, t.replaced}, // the copy each replace cancelled, as docket counts
	} {
		if c.n > 0 {
			c.counter.Add(ctx, c.n, attrs)
		}
	}
}

// count records an add's disposition in the metrics.
func (q *Queue) count(ctx context.Context, e *Execution, replace bool) {
	var t tally
	t.note(e, replace)
	q.record(ctx, e.Task, &t)
}

// countMany is count for a batch: one addition per task name and
// disposition instead of one per task.
func (q *Queue) countMany(ctx context.Context, batch []*Execution) {
	byTask := map[string]*tally{}
	for _, e := range batch {
		t := byTask[e.Task]
		if t == nil {
			t = &tally{}
			byTask[e.Task] = t
		}
		t.note(e, false)
	}
	for task, t := range byTask {
		q.record(ctx, task, t)
	}
}

// struck marks e as kept out by the strike rule and logs it.
func (e *Execution) struck(q *Queue, rule string) {
	e.Disposition, e.StruckBy = DispositionStruck, rule
	q.cfg.Logger.Warn("task struck: not added", "queue", q.cfg.Name, "task", e.Task, "key", e.Key, "strike", rule)
}

func (e *Execution) fillAdded(generation int64, runAt, createdAt time.Time, due bool) {
	e.Generation = generation
	e.When = runAt
	e.CreatedAt = createdAt
	e.State = StateScheduled
	if due {
		e.State = StateQueued
	}
}

// alreadyScheduled describes the live task that kept an add from storing e.
func (q *Queue) alreadyScheduled(ctx context.Context, conn dbtx, e *Execution) (*Execution, error) {
	row, err := q.queries.GetTask(ctx, conn, db.GetTaskParams{Queue: q.cfg.Name, Key: e.Key})
	if err != nil {
		return nil, fmt.Errorf("add %s %q: read live task: %w", e.Task, e.Key, err)
	}
	live := executionFromRow(row)
	live.Disposition = DispositionAlreadyScheduled
	return live, nil
}

// addManyChunk is the number of tasks stored per statement.
const addManyChunk = 5000

// AddMany adds a batch of tasks with Add's rules, in one transaction, as if
// added one after another. The result has one Execution per entry, in
// order; an entry a strike matches is DispositionStruck, and one whose key
// is live, or was stored by an earlier entry, is DispositionAlreadyScheduled
// and, as with Add, describes the task the key holds. Invalid arguments or keys fail the
// whole batch before anything is stored.
//
// A batch that names no keys, added while the queue has no strikes, is
// streamed in with COPY (its generated keys cannot meet a live one); any
// other batch takes one INSERT statement per 5,000 tasks.
func (q *Queue) AddMany(ctx context.Context, entries []Entry) ([]*Execution, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	var out []*Execution
	err := pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
		var err error
		out, err = q.addMany(ctx, tx, entries)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// AddManyTx is AddMany inside the caller's transaction.
func (q *Queue) AddManyTx(ctx context.Context, tx pgx.Tx, entries []Entry) ([]*Execution, error) {
	return q.addMany(ctx, tx, entries)
}

func (q *Queue) addMany(ctx context.Context, tx pgx.Tx, entries []Entry) (out []*Execution, err error) {
	ctx, span := q.tel.StartSpan(ctx, "shadows.add_many", attribute.Int("shadows.tasks", len(entries)))
	defer func() {
		q.countMany(ctx, out)
		telemetry.EndSpan(span, err)
	}()
	out = make([]*Execution, len(entries))
	missing := 0 // entries without a key
	for _, en := range entries {
		if en.Key == "" {
			missing++
		}
	}
	keys := newKeys(missing)
	generated := missing == len(entries) // no entry brought its own key
	for i, en := range entries {
		name, raw, err := encodeArgs(en.Args)
		if err != nil {
			return nil, fmt.Errorf("add many: entry %d: %w", i, err)
		}
		key := en.Key
		if key == "" {
			key, keys = keys[0], keys[1:]
		} else if err := validateKey(key); err != nil {
			return nil, fmt.Errorf("add many: entry %d: %w", i, err)
		}
		out[i] = &Execution{Queue: q.cfg.Name, Key: key, Task: name, Args: raw, Attempt: 1, When: en.When}
	}
	due, copied := false, false
	if generated { // every key is new and has one entry: every entry is stored
		if copied, due, err = q.copyMany(ctx, tx, out); err != nil {
			return nil, err
		}
	}
	if !copied {
		if due, err = q.insertMany(ctx, tx, out); err != nil {
			return nil, err
		}
	}
	if due {
		if err := q.queries.NotifyReady(ctx, tx, q.cfg.Name); err != nil {
			return nil, fmt.Errorf("add many: notify: %w", err)
		}
	}
	return out, nil
}

// insertMany is AddMany's general path: it stores the entries chunk by
// chunk with INSERT … ON CONFLICT, judging strikes, and gives each entry
// its disposition. It reports whether any stored task is already due.
func (q *Queue) insertMany(ctx context.Context, tx pgx.Tx, out []*Execution) (due bool, err error) {
	entriesOf := make(map[string][]int, len(out)) // key → its entries, in order
	for i, e := range out {
		entriesOf[e.Key] = append(entriesOf[e.Key], i)
	}
	// As with one Add after another, a key's first entry is added; a later
	// one only when a strike kept out every entry before it. So each round
	// stores the next entry of every key whose entries so far were struck.
	round := make([]*Execution, 0, len(entriesOf))
	for i, e := range out {
		if entriesOf[e.Key][0] == i {
			round = append(round, e)
		}
	}
	var live []string // keys whose task was live before the batch
	for tried := 1; len(round) > 0; tried++ {
		var struck []*Execution
		for start := 0; start < len(round); start += addManyChunk {
			chunk := round[start:min(start+addManyChunk, len(round))]
			rows, err := q.addChunk(ctx, tx, chunk)
			if err != nil {
				return false, fmt.Errorf("add many: %w", err)
			}
			byKey := make(map[string]*Execution, len(chunk))
			for _, e := range chunk {
				byKey[e.Key] = e
			}
			for _, r := range rows {
				e := byKey[r.Key]
				switch {
				case r.StruckBy != "":
					e.struck(q, r.StruckBy)
					struck = append(struck, e)
				case r.Generation != nil:
					e.Disposition = DispositionScheduled
					d := !r.RunAt.After(*r.CreatedAt)
					due = due || d
					e.fillAdded(*r.Generation, *r.RunAt, *r.CreatedAt, d)
				default:
					live = append(live, r.Key)
				}
			}
		}
		round = round[:0]
		for _, e := range struck {
			if more := entriesOf[e.Key]; len(more) > tried {
				round = append(round, out[more[tried]])
			}
		}
	}
	if err := q.describeAlreadyScheduled(ctx, tx, out, entriesOf, live); err != nil {
		return false, err
	}
	return due, nil
}

// addChunk stores one statement's worth of AddMany's entries, each under
// a key no other entry of the chunk has.
func (q *Queue) addChunk(ctx context.Context, tx pgx.Tx, chunk []*Execution) ([]db.AddTasksRow, error) {
	p := db.AddTasksParams{
		Queue:        q.cfg.Name,
		Keys:         make([]string, len(chunk)),
		Tasks:        make([]string, len(chunk)),
		Args:         make([]string, len(chunk)),
		RunAts:       make([]time.Time, len(chunk)),
		RunAtSets:    make([]bool, len(chunk)),
		TraceContext: telemetry.Inject(ctx),
	}
	for i, e := range chunk {
		p.Keys[i], p.Tasks[i], p.Args[i] = e.Key, e.Task, string(e.Args)
		p.RunAts[i], p.RunAtSets[i] = e.When, !e.When.IsZero()
	}
	return q.queries.AddTasks(ctx, tx, p)
}

// describeAlreadyScheduled gives every AddMany entry that neither was
// stored nor struck the disposition "already scheduled" and, as Add does,
// the task its key holds: the one an earlier entry stored, or the live
// task read back (its row stays locked by the batch's transaction).
func (q *Queue) describeAlreadyScheduled(ctx context.Context, tx pgx.Tx, out []*Execution, entriesOf map[string][]int, live []string) error {
	held := make(map[string]*Execution, len(live))
	for _, entries := range entriesOf {
		for _, i := range entries {
			if out[i].Disposition == DispositionScheduled {
				held[out[i].Key] = out[i]
			}
		}
	}
	if len(live) > 0 {
		rows, err := q.queries.GetTasks(ctx, tx, db.GetTasksParams{Queue: q.cfg.Name, Keys: live})
		if err != nil {
			return fmt.Errorf("add many: read live tasks: %w", err)
		}
		for _, r := range rows {
			held[r.Key] = executionFromRow(db.GetTaskRow(r))
		}
	}
	for i, e := range out {
		if e.Disposition != 0 {
			continue
		}
		if h := held[e.Key]; h != nil {
			d := *h
			out[i] = &d
		}
		out[i].Disposition = DispositionAlreadyScheduled
	}
	return nil
}

// copyMany is AddMany's fast path, for a batch whose keys shadows made
// itself: they are new (time-ordered random UUIDs), so no row can meet a
// live one and the rows are streamed in with COPY instead of an
// INSERT … ON CONFLICT per chunk. It applies only while the queue has no
// strikes (checked in the same transaction; a strike that arrives later
// moves the strike epoch on, and the claim judges these rows then) and
// reports copied false, having written nothing, when it does not apply;
// due reports whether any copied task is already due.
func (q *Queue) copyMany(ctx context.Context, tx pgx.Tx, stored []*Execution) (copied, due bool, err error) {
	pre, err := q.queries.AddManyPrelude(ctx, tx, q.cfg.Name)
	if err != nil {
		return false, false, fmt.Errorf("add many: %w", err)
	}
	if pre.HasStrikes {
		return false, false, nil
	}
	src := &copySource{stored: stored, row: []any{q.cfg.Name, nil, nil, nil}, at: -1}
	// Columns whose value would be their default are left out: with run_at
	// that is now(), the time of this transaction, which pre.Now is.
	cols := []string{"queue", "key", "task", "args"}
	for _, e := range stored {
		if !e.When.IsZero() {
			src.at = len(src.row)
			cols, src.row = append(cols, "run_at"), append(src.row, nil)
			break
		}
	}
	for _, e := range stored {
		runAt := pre.Now
		if !e.When.IsZero() {
			// The database's precision and time zone, as the INSERT path
			// returns them.
			runAt = e.When.Truncate(time.Microsecond).In(pre.Now.Location())
		}
		d := !runAt.After(pre.Now)
		due = due || d
		e.Disposition = DispositionScheduled
		e.fillAdded(1, runAt, pre.Now, d)
	}
	if tc := telemetry.Inject(ctx); len(tc) > 0 {
		cols, src.row = append(cols, "trace_context"), append(src.row, tc)
	}
	if pre.Epoch != 0 {
		cols, src.row = append(cols, "strike_epoch"), append(src.row, pre.Epoch)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"shadows", "tasks"}, cols, src); err != nil {
		return false, false, fmt.Errorf("add many: %w", err)
	}
	return true, due, nil
}

// copySource hands copyMany's rows to COPY one at a time in one reused
// slice, in which the values every row shares are boxed once: a row of
// its own per task, each value boxed anew, was a fifth of the objects a
// busy producer allocated.
type copySource struct {
	stored []*Execution // their When is the run_at stored (see fillAdded)
	next   int
	row    []any // queue, key, task, args, then the optional columns
	at     int   // run_at's place in row, or -1
}

func (c *copySource) Next() bool {
	if c.next == len(c.stored) {
		return false
	}
	e := c.stored[c.next]
	c.row[1] = e.Key
	if c.row[2] != e.Task { // boxed anew only when the name changes
		c.row[2] = e.Task
	}
	c.row[3] = []byte(e.Args)
	if c.at >= 0 {
		c.row[c.at] = e.When
	}
	c.next++
	return true
}

func (c *copySource) Values() ([]any, error) { return c.row, nil }

func (c *copySource) Err() error { return nil }

// Cancel stops the task with key. A task that has not started never will. A
// running task's context is cancelled, and as docket does, its record reads
// cancelled at once and the key can be added again (the run's concurrency
// slots stay held until its handler returns, so a new run of the key may
// wait for them); the worker then records how the handler really ended (cancelled, or as it
// ended if it ignored the cancellation), unless the key was added again
// meanwhile. Cancelling an unknown or finished key does nothing, so Cancel
// is idempotent.
func (q *Queue) Cancel(ctx context.Context, key string) error {
	return q.cancel(ctx, q.pool, key)
}

// CancelTx is Cancel inside the caller's transaction.
func (q *Queue) CancelTx(ctx context.Context, tx pgx.Tx, key string) error {
	return q.cancel(ctx, tx, key)
}

func (q *Queue) cancel(ctx context.Context, conn dbtx, key string) (err error) {
	ctx, span := q.tel.StartSpan(ctx, "shadows.cancel", attribute.String("shadows.key", key))
	defer func() { telemetry.EndSpan(span, err) }()
	if err := validateKey(key); err != nil {
		return err
	}
	q.tel.Cancelled.Add(ctx, 1, q.tel.Attrs())
	row, err := q.queries.CancelTask(ctx, conn, db.CancelTaskParams{Queue: q.cfg.Name, Key: key, TtlSeconds: q.ttlSeconds()})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cancel %q: %w", key, err)
	}
	if q.cfg.ExecutionTTL < 0 && row.Previous != db.ShadowsTaskStateRunning {
		err := q.queries.DeleteTask(ctx, conn, db.DeleteTaskParams{Queue: q.cfg.Name, Key: key, Generation: row.Generation})
		if err != nil {
			return fmt.Errorf("cancel %q: delete record: %w", key, err)
		}
	}
	return nil
}
