// Command demo runs a worker and a producer through the task patterns of
// shadows, printing what happens: tasks added, already scheduled, replaced,
// cancelled, run, their results and their failures.
//
//	go run ./examples/demo        # or: make demo
//	go run ./examples/demo -v     # with the worker's own logs on stderr
//
// It uses the PostgreSQL server of $DATABASE_URL, applying the shadows
// migrations to it, or, when that is not set, a throwaway cluster started
// from the PostgreSQL binaries installed on the machine and removed at the
// end. Its tasks go to their own queue, demo-PID, whose rows it deletes
// before it exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shadows-go/shadows/internal/pgcluster"
	"github.com/shadows-go/shadows/migrations"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/strike"
	"github.com/shadows-go/shadows/worker"
)

func main() {
	verbose := flag.Bool("v", false, "write the worker's logs to standard error")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, *verbose)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		fmt.Fprintln(os.Stderr, "demo: interrupted")
		os.Exit(130)
	default:
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// overall bounds the whole demo, so that it never hangs.
const overall = time.Minute

func run(ctx context.Context, verbose bool) (err error) {
	ctx, cancel := context.WithTimeout(ctx, overall)
	defer cancel()

	url := os.Getenv("DATABASE_URL")
	if url == "" {
		fmt.Println("DATABASE_URL is not set: starting a throwaway PostgreSQL cluster")
		c, err := pgcluster.Start(ctx, pgcluster.Options{})
		if err != nil {
			return fmt.Errorf("%w\n(set DATABASE_URL to use a server of your own)", err)
		}
		defer func() {
			if serr := c.Stop(); serr != nil {
				err = errors.Join(err, serr)
				return
			}
			fmt.Println("stopped the throwaway cluster")
		}()
		url = c.URL()
		fmt.Println("cluster running at", url)
	}

	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := migrations.Up(ctx, pool); err != nil {
		return err
	}

	logger := slog.New(slog.DiscardHandler)
	if verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	cfg := queue.Config{Name: fmt.Sprintf("demo-%d", os.Getpid()), Logger: logger}
	q, err := queue.New(pool, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("schema migrated; queue %s\n", q.Name())
	defer func() {
		// Also after an interrupt: the rows go with a context of their own.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		n, cerr := deleteQueue(cctx, pool, q.Name())
		if cerr != nil {
			err = errors.Join(err, cerr)
			return
		}
		fmt.Printf("deleted the %d rows of queue %s\n", n, q.Name())
	}()

	d := &demo{q: q, pool: pool, checks: make(chan int, 10), syncGate: make(chan struct{})}
	w, err := worker.New(pool, d.registry(), worker.Config{
		Queue:       cfg,
		Concurrency: 4,
		Logger:      logger,
		Fallback:    d.fallback,
	})
	if err != nil {
		return err
	}
	wctx, stopWorker := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(wctx) }()
	fmt.Printf("worker %s running, 4 tasks at a time\n", w.Name())
	defer func() {
		stopWorker()
		if werr := <-stopped; werr != nil {
			err = errors.Join(err, werr)
			return
		}
		fmt.Println("worker stopped")
	}()

	for _, step := range []struct {
		title string
		run   func(context.Context) error
	}{
		{"a task and its result", d.basic},
		{"a task scheduled for later", d.scheduled},
		{"the same key twice: the second add is a no-op", d.dedup},
		{"replace: a debounced task, only the last version runs", d.debounce},
		{"cancel before it runs", d.cancel},
		{"find & flood", d.findAndFlood},
		{"a chain passing data forward, with a branch", d.chain},
		{"fan-out with a keyed finaliser", d.fanOut},
		{"a perpetual task that stops itself when its work is done", d.monitor},
		{"a perpetual task stopped by a cancel", d.healthChecks},
		{"failures: an error, retries, a timeout", d.failures},
		{"a task no handler is registered for, and a fallback", d.unknown},
		{"strikes: stop tasks by their arguments, hold some until restored", d.strikes},
		{"concurrency limits: one sync per customer at a time", d.limits},
	} {
		fmt.Printf("\n── %s\n", step.title)
		if err := step.run(ctx); err != nil {
			return fmt.Errorf("%s: %w", step.title, err)
		}
	}

	s, err := q.Snapshot(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("\nsnapshot: %d live tasks, %d worker(s)\n", s.Total, len(s.Workers))
	return nil
}

// deleteQueue removes every row the demo left: the task records, kept for
// the queue's ExecutionTTL, the worker's heartbeat, and any strike or slot
// an interrupt left behind. The library has no call for it, so it is plain
// SQL.
func deleteQueue(ctx context.Context, pool *pgxpool.Pool, name string) (int64, error) {
	var n int64
	for _, sql := range []string{
		`DELETE FROM shadows.tasks WHERE queue = $1`,
		`DELETE FROM shadows.workers WHERE queue = $1`,
		`DELETE FROM shadows.strikes WHERE queue = $1`,
		`DELETE FROM shadows.slots WHERE queue = $1`,
	} {
		tag, err := pool.Exec(ctx, sql, name)
		if err != nil {
			return n, fmt.Errorf("delete the rows of queue %s: %w", name, err)
		}
		n += tag.RowsAffected()
	}
	return n, nil
}

// demo holds the producer side and what the handlers share with it.
type demo struct {
	q    *queue.Queue
	pool *pgxpool.Pool
	mu   sync.Mutex // serialises output lines

	checks                     chan int // health checks done, for the cancel step
	finaliserNew, finaliserDup atomic.Int64

	// For the concurrency step: the first syncs wait at the gate while the
	// producer looks at the slots; runs records each sync's start and end.
	syncGate chan struct{}
	syncRuns syncLedger
}

// producer and worker print one line each, labelled with who speaks.
func (d *demo) producer(format string, args ...any) { d.say("producer", format, args...) }
func (d *demo) worker(format string, args ...any)   { d.say("worker  ", format, args...) }

func (d *demo) say(who, format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Printf("  %s  %s\n", who, fmt.Sprintf(format, args...))
}

// add adds a task and prints what the add did. It holds the output while it
// does, so that the line comes before any the task's handler prints.
func (d *demo) add(ctx context.Context, args queue.Args, opts *queue.AddOpts) (*queue.Execution, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ex, err := d.q.Add(ctx, args, opts)
	if err != nil {
		return nil, err
	}
	if ex.Disposition == queue.DispositionStruck {
		fmt.Printf("  producer  added %s %s: struck by %s (nothing stored)\n", ex.Task, ex.Key, ex.StruckBy)
		return ex, nil
	}
	when := ""
	if ex.State == queue.StateScheduled {
		when = fmt.Sprintf(", due in %v", time.Until(ex.When).Round(100*time.Millisecond))
	}
	fmt.Printf("  producer  added %s %s: %s (%s%s)\n", ex.Task, ex.Key, strings.ReplaceAll(ex.Disposition.String(), "_", " "), ex.State, when)
	return ex, nil
}

// wait waits for key to end and prints how it ended.
func (d *demo) wait(ctx context.Context, key string) (*queue.Execution, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ex, err := d.q.Wait(ctx, key)
	var failed *queue.TaskError
	switch {
	case errors.As(err, &failed):
		d.producer("%s failed: %s", key, failed.Message)
		return ex, nil
	case errors.Is(err, queue.ErrCancelled):
		d.producer("%s was cancelled: Wait returned queue.ErrCancelled", key)
		return ex, nil
	case err != nil:
		return nil, err
	}
	if len(ex.Result) > 0 {
		d.producer("%s completed, result %s", key, ex.Result)
	} else {
		d.producer("%s completed", key)
	}
	return ex, nil
}

// The tasks. Each argument struct names its task and is stored as JSON.

type Greet struct {
	Name string `json:"name" shadows:"logged"`
}

func (Greet) TaskName() string { return "greet" }

type Reminder struct {
	Text string `json:"text"`
}

func (Reminder) TaskName() string { return "reminder" }

type BuildReport struct {
	Month string `json:"month"`
}

func (BuildReport) TaskName() string { return "build_report" }

type IndexSearch struct {
	Query string `json:"query" shadows:"logged"`
}

func (IndexSearch) TaskName() string { return "index_search" }

type SendNewsletter struct {
	Issue string `json:"issue"`
}

func (SendNewsletter) TaskName() string { return "send_newsletter" }

type FindPendingOrders struct{}

func (FindPendingOrders) TaskName() string { return "find_pending_orders" }

type ProcessOrder struct {
	OrderID int `json:"order_id" shadows:"logged"`
}

func (ProcessOrder) TaskName() string { return "process_order" }

// The steps of a chain carry the chain's name, which keys their successors.
type DownloadData struct {
	Chain string `json:"chain"`
	URL   string `json:"url"`
}

func (DownloadData) TaskName() string { return "download_data" }

type ValidateData struct {
	Chain string `json:"chain"`
	Path  string `json:"path"`
}

func (ValidateData) TaskName() string { return "validate_data" }

type ProcessData struct {
	Chain string `json:"chain"`
	Path  string `json:"path"`
}

func (ProcessData) TaskName() string { return "process_data" }

type HandleInvalidData struct {
	Chain string `json:"chain"`
	Path  string `json:"path"`
}

func (HandleInvalidData) TaskName() string { return "handle_invalid_data" }

type SplitDataset struct {
	Dataset string `json:"dataset"`
	Chunks  int    `json:"chunks"`
}

func (SplitDataset) TaskName() string { return "split_dataset" }

type ProcessChunk struct {
	Dataset string `json:"dataset"`
	Chunk   int    `json:"chunk"`
	Chunks  int    `json:"chunks"`
}

func (ProcessChunk) TaskName() string { return "process_chunk" }

type FinalizeDataset struct {
	Dataset string `json:"dataset"`
	Chunks  int    `json:"chunks"`
}

func (FinalizeDataset) TaskName() string { return "finalize_dataset" }

type MonitorDeployment struct {
	Deployment string `json:"deployment"`
	Check      int    `json:"check"`
}

func (MonitorDeployment) TaskName() string { return "monitor_deployment" }

type HealthCheck struct {
	URL   string `json:"url"`
	Check int    `json:"check"`
}

func (HealthCheck) TaskName() string { return "health_check" }

type ChargeCard struct {
	Customer string  `json:"customer" shadows:"logged"`
	Amount   float64 `json:"amount"   shadows:"logged"`
}

func (ChargeCard) TaskName() string { return "charge_card" }

type SendEmail struct {
	To string `json:"to" shadows:"logged"`
}

func (SendEmail) TaskName() string { return "send_email" }

type SlowReport struct {
	Name string `json:"name"`
}

func (SlowReport) TaskName() string { return "slow_report" }

type ProcessPayment struct {
	Customer string  `json:"customer" shadows:"logged"`
	Amount   float64 `json:"amount"   shadows:"logged"`
}

func (ProcessPayment) TaskName() string { return "process_payment" }

// SyncCustomer may run once at a time per customer (a concurrency limit).
type SyncCustomer struct {
	Customer string `json:"customer" shadows:"logged"`
	N        int    `json:"n"        shadows:"logged"`
}

func (SyncCustomer) TaskName() string { return "sync_customer" }

// LegacyExport is added but never registered: the fallback gets it.
type LegacyExport struct {
	Format string `json:"format"`
}

func (LegacyExport) TaskName() string { return "legacy_export" }

// Intervals of the self-rescheduling tasks, and how long a sync takes.
const (
	monitorEvery = 200 * time.Millisecond
	healthEvery  = 200 * time.Millisecond
	syncTakes    = 150 * time.Millisecond
)

// pendingOrders stands in for a query of the application's database.
var pendingOrders = []int{101, 102, 103, 104, 105}

func chunkKey(dataset string, chunk int) string { return fmt.Sprintf("chunk-%s-%d", dataset, chunk) }

// registry registers the handlers of every task but LegacyExport.
func (d *demo) registry() *worker.Registry {
	reg := worker.NewRegistry()

	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[Greet]) error {
		d.worker("ran greet(name=%s), attempt %d", t.Args.Name, t.Attempt)
		return t.SetResult("Hello, " + t.Args.Name + "!")
	}, worker.Policy{})

	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[Reminder]) error {
		d.worker("ran reminder(%q), %v after it was due", t.Args.Text, time.Since(t.When).Round(time.Millisecond))
		return nil
	}, worker.Policy{})

	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[BuildReport]) error {
		d.worker("ran build_report(month=%s)", t.Args.Month)
		return nil
	}, worker.Policy{})

	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[IndexSearch]) error {
		d.worker("ran index_search(query=%q)", t.Args.Query)
		return nil
	}, worker.Policy{})

	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[SendNewsletter]) error {
		d.worker("ran send_newsletter(%s): this should not happen", t.Args.Issue)
		return nil
	}, worker.Policy{})

	// Find & flood: the finder only discovers the work and adds a task per
	// order; keyed by order, an order still waiting is not queued twice.
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[FindPendingOrders]) error {
		entries := make([]queue.Entry, len(pendingOrders))
		keys := make([]string, len(pendingOrders))
		for i, id := range pendingOrders {
			keys[i] = fmt.Sprint("order-", id)
			entries[i] = queue.Entry{Args: ProcessOrder{OrderID: id}, Key: keys[i]}
		}
		if _, err := t.Queue.AddMany(ctx, entries); err != nil {
			return err
		}
		d.worker("find_pending_orders found %d orders and queued a process_order for each", len(entries))
		return t.SetResult(keys)
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[ProcessOrder]) error {
		// Several run at once; the producer prints their results in order.
		return t.SetResult(fmt.Sprintf("charged %.2f", float64(t.Args.OrderID%7)*10+0.5))
	}, worker.Policy{})

	// A chain: each step adds the next, under the chain's keys, passing
	// its output forward.
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[DownloadData]) error {
		path := "/tmp/" + t.Args.URL[strings.LastIndexByte(t.Args.URL, '/')+1:]
		d.worker("download_data fetched %s to %s", t.Args.URL, path)
		_, err := t.Queue.Add(ctx, ValidateData{Chain: t.Args.Chain, Path: path}, &queue.AddOpts{Key: t.Args.Chain + "-validate"})
		return err
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[ValidateData]) error {
		valid := !strings.Contains(t.Args.Path, "broken")
		d.worker("validate_data checked %s: valid=%v", t.Args.Path, valid)
		var next queue.Args = ProcessData(t.Args)
		if !valid {
			next = HandleInvalidData(t.Args)
		}
		// Either branch ends under the same key, which the producer waits for.
		_, err := t.Queue.Add(ctx, next, &queue.AddOpts{Key: t.Args.Chain + "-end"})
		return err
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[ProcessData]) error {
		d.worker("process_data stored %s", t.Args.Path)
		return t.SetResult(map[string]any{"path": t.Args.Path, "rows": 1200})
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[HandleInvalidData]) error {
		d.worker("handle_invalid_data quarantined %s", t.Args.Path)
		return t.SetResult(map[string]any{"path": t.Args.Path, "quarantined": true})
	}, worker.Policy{})

	// Fan-out: the split adds the chunks; each chunk, when done, asks for
	// the finaliser under one key, so only the first ask schedules it.
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[SplitDataset]) error {
		entries := make([]queue.Entry, t.Args.Chunks)
		for i := range entries {
			entries[i] = queue.Entry{
				Args: ProcessChunk{Dataset: t.Args.Dataset, Chunk: i, Chunks: t.Args.Chunks},
				Key:  chunkKey(t.Args.Dataset, i),
			}
		}
		if _, err := t.Queue.AddMany(ctx, entries); err != nil {
			return err
		}
		d.worker("split_dataset split %s into %d chunks", t.Args.Dataset, t.Args.Chunks)
		return nil
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[ProcessChunk]) error {
		if err := t.SetResult(100 * (t.Args.Chunk + 1)); err != nil { // rows processed
			return err
		}
		ex, err := t.Queue.Add(ctx, FinalizeDataset{Dataset: t.Args.Dataset, Chunks: t.Args.Chunks}, &queue.AddOpts{
			Key:  "finalize-" + t.Args.Dataset,
			When: time.Now().Add(200 * time.Millisecond),
		})
		if err != nil {
			return err
		}
		if ex.Disposition == queue.DispositionScheduled {
			d.finaliserNew.Add(1)
		} else {
			d.finaliserDup.Add(1)
		}
		return nil
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[FinalizeDataset]) error {
		total := 0
		for i := range t.Args.Chunks {
			ex, err := t.Queue.Execution(ctx, chunkKey(t.Args.Dataset, i))
			if err != nil {
				return err
			}
			if !ex.State.Terminal() {
				d.worker("finalize_dataset: %s is still %s, looking again in 100ms", ex.Key, ex.State)
				_, err := t.Queue.Replace(ctx, t.Args, queue.AddOpts{Key: t.Key, When: time.Now().Add(100 * time.Millisecond)})
				return err
			}
			var rows int
			if err := ex.DecodeResult(&rows); err != nil {
				return err
			}
			total += rows
		}
		d.worker("finalize_dataset: all %d chunks of %s done, %d rows", t.Args.Chunks, t.Args.Dataset, total)
		return t.SetResult(total)
	}, worker.Policy{})

	// Perpetual, until the work is done: the task runs again every
	// monitorEvery, carrying its count forward, and ends its own chain.
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[MonitorDeployment]) error {
		status := "rolling out"
		if t.Args.Check == 3 {
			status = "completed"
		}
		d.worker("monitor_deployment check %d: %s is %s", t.Args.Check, t.Args.Deployment, status)
		if status == "completed" {
			t.Perpetual.Cancel()
			return nil
		}
		return t.Perpetual.Perpetuate(MonitorDeployment{Deployment: t.Args.Deployment, Check: t.Args.Check + 1})
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: monitorEvery}})

	// Perpetual forever, until someone cancels the key.
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[HealthCheck]) error {
		d.worker("health_check #%d: %s is healthy", t.Args.Check, t.Args.URL)
		select {
		case d.checks <- t.Args.Check:
		default:
		}
		return t.Perpetual.Perpetuate(HealthCheck{URL: t.Args.URL, Check: t.Args.Check + 1})
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: healthEvery}})

	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[ChargeCard]) error {
		d.worker("charge_card(customer=%s, amount=%.2f)", t.Args.Customer, t.Args.Amount)
		if t.Args.Amount > 1000 {
			return fmt.Errorf("declined: %.2f is over the card's limit", t.Args.Amount)
		}
		return nil
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[SendEmail]) error {
		if t.Attempt < t.Attempts {
			d.worker("send_email(to=%s) attempt %d of %d: mail server busy", t.Args.To, t.Attempt, t.Attempts)
			return errors.New("mail server busy")
		}
		d.worker("send_email(to=%s) attempt %d of %d: sent", t.Args.To, t.Attempt, t.Attempts)
		return nil
	}, worker.Policy{Retry: worker.Retry{Attempts: 3, Delay: 100 * time.Millisecond}})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[SlowReport]) error {
		d.worker("slow_report(%s) started; it takes a minute, its timeout is 200ms", t.Args.Name)
		select {
		case <-time.After(time.Minute):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, worker.Policy{Timeout: 200 * time.Millisecond})

	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[ProcessPayment]) error {
		d.worker("process_payment(customer=%s, amount=%.2f)", t.Args.Customer, t.Args.Amount)
		return nil
	}, worker.Policy{})

	// One sync per customer at a time, across every worker of the queue.
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[SyncCustomer]) error {
		d.syncRuns.start(t.Args)
		defer d.syncRuns.end(t.Args)
		select {
		case <-d.syncGate: // closed once the producer has looked at the slots
		case <-ctx.Done():
			return ctx.Err()
		}
		time.Sleep(syncTakes) // … call the CRM …
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "customer", Max: 1}}})

	return reg
}

// fallback runs tasks no handler is registered for: it keeps them, failed,
// with what arrived, rather than dropping them as the default does.
func (d *demo) fallback(ctx context.Context, t *worker.Task[worker.RawArgs]) error {
	d.worker("fallback: no handler for %s, args %s", t.Args.Name, t.Args.JSON)
	return fmt.Errorf("%w %s", worker.ErrUnknownTask, t.Args.Name)
}

// The steps, in the order they run.

func (d *demo) basic(ctx context.Context) error {
	ex, err := d.add(ctx, Greet{Name: "Ada"}, &queue.AddOpts{Key: "greet-ada"})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	greeting, err := queue.Result[string](wctx, d.q, ex.Key)
	if err != nil {
		return err
	}
	d.producer("queue.Result[string](%s) = %q", ex.Key, greeting)
	return nil
}

func (d *demo) scheduled(ctx context.Context) error {
	ex, err := d.add(ctx, Reminder{Text: "stand-up"}, &queue.AddOpts{Key: "reminder-standup", When: time.Now().Add(time.Second)})
	if err != nil {
		return err
	}
	_, err = d.wait(ctx, ex.Key)
	return err
}

func (d *demo) dedup(ctx context.Context) error {
	opts := &queue.AddOpts{Key: "report-2024-06", When: time.Now().Add(300 * time.Millisecond)}
	for range 2 {
		if _, err := d.add(ctx, BuildReport{Month: "2024-06"}, opts); err != nil {
			return err
		}
	}
	_, err := d.wait(ctx, opts.Key)
	return err
}

func (d *demo) debounce(ctx context.Context) error {
	const key = "index-search-box"
	for i, typed := range []string{"s", "sh", "sha", "shadows"} {
		if i > 0 {
			time.Sleep(50 * time.Millisecond) // typing
		}
		ex, err := d.q.Replace(ctx, IndexSearch{Query: typed}, queue.AddOpts{Key: key, When: time.Now().Add(300 * time.Millisecond)})
		if err != nil {
			return err
		}
		d.producer("replaced %s with query=%q: generation %d, due in 300ms", key, typed, ex.Generation)
	}
	_, err := d.wait(ctx, key)
	return err
}

func (d *demo) cancel(ctx context.Context) error {
	const key = "newsletter-june"
	if _, err := d.add(ctx, SendNewsletter{Issue: "june"}, &queue.AddOpts{Key: key, When: time.Now().Add(500 * time.Millisecond)}); err != nil {
		return err
	}
	if err := d.q.Cancel(ctx, key); err != nil {
		return err
	}
	d.producer("cancelled %s", key)
	if err := d.q.Cancel(ctx, key); err != nil {
		return err
	}
	d.producer("cancelled %s again: a no-op", key)
	_, err := d.wait(ctx, key)
	return err
}

func (d *demo) findAndFlood(ctx context.Context) error {
	ex, err := d.add(ctx, FindPendingOrders{}, &queue.AddOpts{Key: "find-pending-orders"})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	keys, err := queue.Result[[]string](wctx, d.q, ex.Key)
	if err != nil {
		return err
	}
	for _, key := range keys {
		outcome, err := queue.Result[string](wctx, d.q, key)
		if err != nil {
			return err
		}
		d.producer("%s: %s", key, outcome)
	}
	return nil
}

func (d *demo) chain(ctx context.Context) error {
	for _, c := range []struct{ name, url string }{
		{"chain-sales", "https://example.com/exports/sales-2024.csv"},
		{"chain-legacy", "https://example.com/exports/broken-1999.csv"},
	} {
		if _, err := d.add(ctx, DownloadData{Chain: c.name, URL: c.url}, &queue.AddOpts{Key: c.name + "-download"}); err != nil {
			return err
		}
		if _, err := d.wait(ctx, c.name+"-end"); err != nil {
			return err
		}
	}
	return nil
}

func (d *demo) fanOut(ctx context.Context) error {
	if _, err := d.add(ctx, SplitDataset{Dataset: "ds-7", Chunks: 5}, &queue.AddOpts{Key: "split-ds-7"}); err != nil {
		return err
	}
	if _, err := d.wait(ctx, "finalize-ds-7"); err != nil {
		return err
	}
	d.producer("the chunks asked for finalize-ds-7 %d times: %d scheduled it, %d found it already scheduled",
		d.finaliserNew.Load()+d.finaliserDup.Load(), d.finaliserNew.Load(), d.finaliserDup.Load())
	return nil
}

func (d *demo) monitor(ctx context.Context) error {
	ex, err := d.add(ctx, MonitorDeployment{Deployment: "deploy-42", Check: 1}, &queue.AddOpts{Key: "monitor-deploy-42"})
	if err != nil {
		return err
	}
	ex, err = d.wait(ctx, ex.Key)
	if err != nil {
		return err
	}
	d.producer("%s: one key throughout, now at generation %d (each run scheduled the next)", ex.Key, ex.Generation)
	return nil
}

func (d *demo) healthChecks(ctx context.Context) error {
	const key = "health-api"
	if _, err := d.add(ctx, HealthCheck{URL: "https://api.example.com/health", Check: 1}, &queue.AddOpts{Key: key}); err != nil {
		return err
	}
	for n := 0; n < 3; {
		select {
		case n = <-d.checks:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// The third run is under way; once its worker has recorded it, the
	// fourth is scheduled: cancel that one. (A cancel that reaches a running
	// perpetual task ends its chain too, but records the run as completed.)
	for {
		ex, err := d.q.Execution(ctx, key)
		if err != nil {
			return err
		}
		if ex.State != queue.StateRunning {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := d.q.Cancel(ctx, key); err != nil {
		return err
	}
	d.producer("cancelled %s after 3 checks", key)
	_, err := d.wait(ctx, key)
	return err
}

func (d *demo) failures(ctx context.Context) error {
	for _, amount := range []float64{25, 5000} {
		ex, err := d.add(ctx, ChargeCard{Customer: "c-1", Amount: amount}, &queue.AddOpts{Key: fmt.Sprintf("charge-c-1-%.0f", amount)})
		if err != nil {
			return err
		}
		if _, err := d.wait(ctx, ex.Key); err != nil {
			return err
		}
	}
	ex, err := d.add(ctx, SendEmail{To: "ada@example.com"}, &queue.AddOpts{Key: "email-ada"})
	if err != nil {
		return err
	}
	if ex, err = d.wait(ctx, ex.Key); err != nil {
		return err
	}
	d.producer("%s took %d attempts", ex.Key, ex.Attempt)
	ex, err = d.add(ctx, SlowReport{Name: "yearly"}, &queue.AddOpts{Key: "report-yearly"})
	if err != nil {
		return err
	}
	_, err = d.wait(ctx, ex.Key)
	return err
}

func (d *demo) unknown(ctx context.Context) error {
	ex, err := d.add(ctx, LegacyExport{Format: "xls"}, &queue.AddOpts{Key: "legacy-export-1"})
	if err != nil {
		return err
	}
	_, err = d.wait(ctx, ex.Key)
	return err
}

func (d *demo) strikes(ctx context.Context) error {
	// Block one customer across every task: nothing of theirs is stored.
	blocked := strike.Rule{Param: "customer", Op: strike.Eq, Value: "c-13"}
	if _, err := d.q.Strike(ctx, blocked); err != nil {
		return err
	}
	d.producer("struck %s", blocked)
	if _, err := d.add(ctx, ProcessPayment{Customer: "c-13", Amount: 40}, &queue.AddOpts{Key: "payment-c-13"}); err != nil {
		return err
	}
	if _, err := d.add(ctx, ProcessPayment{Customer: "c-7", Amount: 40}, &queue.AddOpts{Key: "payment-c-7"}); err != nil {
		return err
	}
	if _, err := d.wait(ctx, "payment-c-7"); err != nil {
		return err
	}

	// Hold large payments: they are stored and wait, untouched, until the
	// hold is restored.
	hold := strike.Rule{Task: "process_payment", Param: "amount", Op: strike.Gt, Value: 10000, Hold: true}
	if _, err := d.q.Strike(ctx, hold); err != nil {
		return err
	}
	d.producer("struck %s", hold)
	if _, err := d.add(ctx, ProcessPayment{Customer: "c-7", Amount: 25000}, &queue.AddOpts{Key: "payment-big"}); err != nil {
		return err
	}
	var ex *queue.Execution
	if err := poll(ctx, func() (bool, error) {
		var err error
		ex, err = d.q.Execution(ctx, "payment-big")
		return err == nil && ex.Held, err
	}); err != nil {
		return err
	}
	s, err := d.q.Snapshot(ctx)
	if err != nil {
		return err
	}
	d.producer("%s is %s and held (a worker set it aside); the queue holds %d", ex.Key, ex.State, s.Held)
	active, err := d.q.Strikes(ctx)
	if err != nil {
		return err
	}
	for _, a := range active {
		d.producer("active strike: %s", a.Text)
	}
	// Printed before each restore: once the hold is gone, the worker may
	// speak first.
	for _, r := range []strike.Rule{blocked, hold} {
		d.producer("restoring %s", r)
		if _, err := d.q.Restore(ctx, r); err != nil {
			return err
		}
	}
	_, err = d.wait(ctx, "payment-big")
	return err
}

func (d *demo) limits(ctx context.Context) error {
	var entries []queue.Entry
	for n := 1; n <= 3; n++ {
		for _, c := range []string{"c-1001", "c-2001"} {
			entries = append(entries, queue.Entry{Args: SyncCustomer{Customer: c, N: n}, Key: fmt.Sprintf("sync-%s-%d", c, n)})
		}
	}
	// The first sync of each customer goes first, so that the other two of
	// each wait behind it.
	for _, e := range [][]queue.Entry{entries[:2], entries[2:]} {
		if _, err := d.q.AddMany(ctx, e); err != nil {
			return err
		}
		if err := poll(ctx, func() (bool, error) { return d.syncRuns.started() == 2, nil }); err != nil {
			return err
		}
	}
	d.producer("added 3 sync_customer tasks for each of c-1001 and c-2001, limit 1 per customer")
	if err := poll(ctx, func() (bool, error) {
		s, err := d.q.Snapshot(ctx)
		return err == nil && s.Waiting == 4, err
	}); err != nil {
		return err
	}
	rows, err := d.pool.Query(ctx, `SELECT limit_key, running, max_slots FROM shadows.concurrency WHERE queue = $1 ORDER BY limit_key`, d.q.Name())
	if err != nil {
		return err
	}
	for rows.Next() {
		var key string
		var running, maxSlots int
		if err := rows.Scan(&key, &running, &maxSlots); err != nil {
			rows.Close()
			return err
		}
		d.producer("shadows.concurrency: %s has %d of %d slot(s) in use", key, running, maxSlots)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	d.producer("snapshot: 4 tasks wait for a slot; letting the syncs run")
	close(d.syncGate)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, e := range entries {
		if _, err := d.q.Wait(wctx, e.Key); err != nil {
			return err
		}
	}
	for _, c := range []string{"c-1001", "c-2001"} {
		order, peak := d.syncRuns.summary(c)
		d.producer("%s: syncs %s, at most %d at a time", c, strings.Join(order, " → "), peak)
	}
	d.producer("in all, at most %d syncs ran at once: the two customers side by side", d.syncRuns.peakAll())
	return nil
}

// poll checks cond every 10ms until it holds, it fails, or 10s pass.
func poll(ctx context.Context, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		ok, err := cond()
		switch {
		case err != nil:
			return err
		case ok:
			return nil
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// syncLedger records the runs of sync_customer: the order they started in
// per customer, and how many ran at once, per customer and in all.
type syncLedger struct {
	mu       sync.Mutex
	order    map[string][]string
	running  map[string]int
	peak     map[string]int
	all      int
	allPeak  int
	startedN int
}

func (l *syncLedger) start(a SyncCustomer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.order == nil {
		l.order, l.running, l.peak = map[string][]string{}, map[string]int{}, map[string]int{}
	}
	l.order[a.Customer] = append(l.order[a.Customer], fmt.Sprint("#", a.N))
	l.running[a.Customer]++
	l.peak[a.Customer] = max(l.peak[a.Customer], l.running[a.Customer])
	l.all++
	l.allPeak = max(l.allPeak, l.all)
	l.startedN++
}

func (l *syncLedger) end(a SyncCustomer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.running[a.Customer]--
	l.all--
}

func (l *syncLedger) started() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.startedN
}

func (l *syncLedger) summary(customer string) (order []string, peak int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.order[customer], l.peak[customer]
}

func (l *syncLedger) peakAll() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.allPeak
}
