package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// The task arguments of the examples.

type SendEmail struct {
	To      string `json:"to"`
	Subject string `json:"subject"`
}

func (SendEmail) TaskName() string { return "send_email" }

type FindPendingOrders struct{}

func (FindPendingOrders) TaskName() string { return "find_pending_orders" }

type ProcessSingleOrder struct {
	OrderID int `json:"order_id"`
}

func (ProcessSingleOrder) TaskName() string { return "process_single_order" }

type DownloadData struct {
	URL string `json:"url"`
}

func (DownloadData) TaskName() string { return "download_data" }

type ValidateData struct {
	Path string `json:"path"`
}

func (ValidateData) TaskName() string { return "validate_data" }

type ProcessData struct {
	Path string `json:"path"`
}

func (ProcessData) TaskName() string { return "process_data" }

type HandleInvalidData struct {
	Path string `json:"path"`
}

func (HandleInvalidData) TaskName() string { return "handle_invalid_data" }

type ProcessChunk struct {
	Dataset string `json:"dataset"`
	Chunk   int    `json:"chunk"`
}

func (ProcessChunk) TaskName() string { return "process_chunk" }

type FinalizeDataset struct {
	Dataset string `json:"dataset"`
	Chunks  int    `json:"chunks"`
}

func (FinalizeDataset) TaskName() string { return "finalize_dataset" }

type MonitorDeployment struct {
	DeploymentID string `json:"deployment_id"`
	Check        int    `json:"check"`
}

func (MonitorDeployment) TaskName() string { return "monitor_deployment" }

type HealthCheck struct {
	URL   string `json:"url"`
	Check int    `json:"check"`
}

func (HealthCheck) TaskName() string { return "health_check" }

type LegacyExport struct {
	Format string `json:"format"`
}

func (LegacyExport) TaskName() string { return "legacy_export" }

type SlowReport struct{}

func (SlowReport) TaskName() string { return "slow_report" }

// A registry maps task names, taken from the argument types, to handlers
// and the policy they run with. Register every task before starting
// workers.
func ExampleRegister() {
	reg := worker.NewRegistry()
	err := worker.Register(reg, func(ctx context.Context, t *worker.Task[SendEmail]) error {
		t.Logger.Info("sending", "to", t.Args.To)
		return nil // … send it …
	}, worker.Policy{Timeout: 30 * time.Second})
	fmt.Println("first:", err)

	// A task name can have one handler only.
	err = worker.Register(reg, func(ctx context.Context, t *worker.Task[SendEmail]) error {
		return nil
	}, worker.Policy{})
	fmt.Println("again:", errors.Is(err, worker.ErrInvalidRegistration))

	// MustRegister panics instead, for wiring at start-up.
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[SlowReport]) error {
		return nil
	}, worker.Policy{})
	// A new registry holds the built-in tasks fail, sleep and trace.
	fmt.Println(reg.Names())
	// Output:
	// first: <nil>
	// again: true
	// [fail send_email sleep slow_report trace]
}

// RunUntilFinished works a queue until nothing is left to run (nothing
// queued, scheduled or running), which suits batch jobs and tests. With Concurrency 1 the tasks run one at a time, in
// the order they became due.
func ExampleWorker_RunUntilFinished() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("run-until-finished")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[SendEmail]) error {
		fmt.Printf("to %s: %s\n", t.Args.To, t.Args.Subject)
		return t.SetResult("sent")
	}, worker.Policy{})

	for _, to := range []string{"ada@example.com", "grace@example.com"} {
		_, err := q.Add(ctx, SendEmail{To: to, Subject: "Welcome"}, &queue.AddOpts{Key: "welcome-" + to})
		if err != nil {
			log.Fatal(err)
		}
	}
	w, err := worker.New(pool, reg, worker.Config{
		Queue:       q.Config(),
		Concurrency: 1,
		Logger:      slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}

	ex, err := q.Execution(ctx, "welcome-ada@example.com")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.State, "attempt", ex.Attempt, "result", string(ex.Result))
	// Output:
	// to ada@example.com: Welcome
	// to grace@example.com: Welcome
	// completed attempt 1 result "sent"
}

// Run is how a service runs a worker: in the background until its context
// is cancelled. It then stops claiming tasks, lets the running ones finish
// and record their outcome, and returns.
func ExampleWorker_Run() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("run")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[SendEmail]) error {
		return nil
	}, worker.Policy{})
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(runCtx) }()

	ex, err := q.Add(ctx, SendEmail{To: "ada@example.com", Subject: "Hello"}, nil)
	if err != nil {
		log.Fatal(err)
	}
	ex, err = q.Wait(ctx, ex.Key)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.Task, ex.State)

	stop() // as on SIGTERM
	fmt.Println("worker stopped:", <-stopped)
	// Output:
	// send_email completed
	// worker stopped: <nil>
}

// A chain: each step adds the next one through t.Queue, passing its output
// forward, and chooses which step comes next.
func ExampleWorker_RunUntilFinished_chain() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("chain")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[DownloadData]) error {
		path := "/tmp/sales-2024.csv" // … download t.Args.URL …
		fmt.Println("downloaded", t.Args.URL, "to", path)
		_, err := t.Queue.Add(ctx, ValidateData{Path: path}, nil)
		return err
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[ValidateData]) error {
		valid := true // … check the file …
		fmt.Println("validated", t.Args.Path, "valid:", valid)
		var next queue.Args = ProcessData(t.Args)
		if !valid {
			next = HandleInvalidData(t.Args)
		}
		_, err := t.Queue.Add(ctx, next, nil)
		return err
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[ProcessData]) error {
		fmt.Println("processed", t.Args.Path)
		return nil
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[HandleInvalidData]) error {
		fmt.Println("quarantined", t.Args.Path)
		return nil
	}, worker.Policy{})

	if _, err := q.Add(ctx, DownloadData{URL: "https://example.com/sales-2024.csv"}, nil); err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// downloaded https://example.com/sales-2024.csv to /tmp/sales-2024.csv
	// validated /tmp/sales-2024.csv valid: true
	// processed /tmp/sales-2024.csv
}

// Fan-out: a dataset is split into chunks that run in parallel, and one
// finaliser runs after them. Every chunk asks for the finaliser under the
// same key when it is done: the first ask schedules it, the others find it
// already scheduled, so it runs once. The finaliser checks that every chunk
// has ended and, if one has not, puts itself back a little later.
func ExampleWorker_RunUntilFinished_fanOut() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("fan-out")})
	if err != nil {
		log.Fatal(err)
	}

	chunkKey := func(dataset string, chunk int) string { return fmt.Sprintf("chunk-%s-%d", dataset, chunk) }
	var scheduled, already atomic.Int64

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[ProcessChunk]) error {
		rows := 100 * (t.Args.Chunk + 1) // … process the chunk …
		if err := t.SetResult(rows); err != nil {
			return err
		}
		ex, err := t.Queue.Add(ctx, FinalizeDataset{Dataset: t.Args.Dataset, Chunks: 4}, &queue.AddOpts{
			Key:  "finalize-" + t.Args.Dataset,
			When: time.Now().Add(50 * time.Millisecond),
		})
		if err != nil {
			return err
		}
		if ex.Disposition == queue.DispositionScheduled {
			scheduled.Add(1)
		} else {
			already.Add(1)
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
			if !ex.State.Terminal() { // not yet: look again shortly
				_, err := t.Queue.Replace(ctx, t.Args, queue.AddOpts{Key: t.Key, When: time.Now().Add(50 * time.Millisecond)})
				return err
			}
			var rows int
			if err := ex.DecodeResult(&rows); err != nil {
				return err
			}
			total += rows
		}
		fmt.Printf("finalized %s: %d chunks, %d rows\n", t.Args.Dataset, t.Args.Chunks, total)
		return nil
	}, worker.Policy{})

	chunks := make([]queue.Entry, 4)
	for i := range chunks {
		chunks[i] = queue.Entry{Args: ProcessChunk{Dataset: "ds-7", Chunk: i}, Key: chunkKey("ds-7", i)}
	}
	if _, err := q.AddMany(ctx, chunks); err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Concurrency: 4, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("finaliser asks: %d scheduled, %d already scheduled\n", scheduled.Load(), already.Load())
	// Output:
	// finalized ds-7: 4 chunks, 1000 rows
	// finaliser asks: 1 scheduled, 3 already scheduled
}

// A Perpetual task runs again Every interval after each run starts, whether
// it succeeded or failed. The handler steers its chain through t.Perpetual:
// here it carries a counter forward in its arguments and stops the chain
// once the deployment it watches has finished.
func ExamplePerpetual() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("perpetual")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[MonitorDeployment]) error {
		status := "rolling out" // … ask the deployment system …
		if t.Args.Check == 3 {
			status = "completed"
		}
		fmt.Printf("check %d: %s %s\n", t.Args.Check, t.Args.DeploymentID, status)
		if status == "completed" {
			t.Perpetual.Cancel() // no next run
			return nil
		}
		return t.Perpetual.Perpetuate(MonitorDeployment{DeploymentID: t.Args.DeploymentID, Check: t.Args.Check + 1})
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: 20 * time.Millisecond}})

	_, err = q.Add(ctx, MonitorDeployment{DeploymentID: "deploy-42", Check: 1}, &queue.AddOpts{Key: "monitor-deploy-42"})
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	ex, err := q.Execution(ctx, "monitor-deploy-42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.State)
	// Output:
	// check 1: deploy-42 rolling out
	// check 2: deploy-42 rolling out
	// check 3: deploy-42 completed
	// completed
}

// Find & flood: a light perpetual task discovers the work every minute and
// floods the queue with a task per item, which any number of workers then
// share. Keying the tasks by item means a round does not queue an item
// again while it still waits. RunAtMost stops the finder after one round,
// as a test would; in production Run keeps it going.
func ExamplePerpetual_findAndFlood() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("find-and-flood")})
	if err != nil {
		log.Fatal(err)
	}

	pendingOrders := []int{101, 102, 103, 104, 105} // stands in for a query
	var (
		mu        sync.Mutex
		processed []int
	)
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[FindPendingOrders]) error {
		entries := make([]queue.Entry, len(pendingOrders))
		for i, id := range pendingOrders {
			entries[i] = queue.Entry{Args: ProcessSingleOrder{OrderID: id}, Key: fmt.Sprint("order-", id)}
		}
		// t.Queue is the queue the task came from.
		if _, err := t.Queue.AddMany(ctx, entries); err != nil {
			return err
		}
		fmt.Printf("queued %d orders for processing\n", len(entries))
		return nil
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: time.Minute}})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[ProcessSingleOrder]) error {
		// … charge, update the inventory, confirm …
		mu.Lock()
		processed = append(processed, t.Args.OrderID)
		mu.Unlock()
		return nil
	}, worker.Policy{})

	if _, err := q.Add(ctx, FindPendingOrders{}, &queue.AddOpts{Key: "find-pending-orders"}); err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Concurrency: 4, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunAtMost(ctx, map[string]int{"find-pending-orders": 1}); err != nil {
		log.Fatal(err)
	}
	slices.Sort(processed) // they ran in parallel
	fmt.Println("processed", processed)
	// Output:
	// queued 5 orders for processing
	// processed [101 102 103 104 105]
}

// RunAtMost stops a chain that would go on forever, for tests: the key runs
// at most the given number of times, and its chain then ends.
func ExampleWorker_RunAtMost() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("run-at-most")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[HealthCheck]) error {
		fmt.Printf("check %d of %s\n", t.Args.Check, t.Args.URL)
		return t.Perpetual.Perpetuate(HealthCheck{URL: t.Args.URL, Check: t.Args.Check + 1})
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: 10 * time.Millisecond}})

	_, err = q.Add(ctx, HealthCheck{URL: "https://api.example.com/health", Check: 1}, &queue.AddOpts{Key: "health-api"})
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunAtMost(ctx, map[string]int{"health-api": 3}); err != nil {
		log.Fatal(err)
	}
	ex, err := q.Execution(ctx, "health-api")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.State)
	// Output:
	// check 1 of https://api.example.com/health
	// check 2 of https://api.example.com/health
	// check 3 of https://api.example.com/health
	// completed
}

// A Retry policy runs a failed task again under the same key, after a
// delay, until its attempts are used up. Attempts counts every run.
func ExamplePolicy_retry() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("retry")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[SendEmail]) error {
		if t.Attempt < 3 {
			fmt.Printf("attempt %d of %d: mail server busy\n", t.Attempt, t.Attempts)
			return errors.New("mail server busy")
		}
		fmt.Printf("attempt %d of %d: sent\n", t.Attempt, t.Attempts)
		return nil
	}, worker.Policy{Retry: worker.Retry{Attempts: 3, Delay: 10 * time.Millisecond}})

	_, err = q.Add(ctx, SendEmail{To: "ada@example.com", Subject: "Hello"}, &queue.AddOpts{Key: "hello-ada"})
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	ex, err := q.Execution(ctx, "hello-ada")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.State, "after attempt", ex.Attempt)
	// Output:
	// attempt 1 of 3: mail server busy
	// attempt 2 of 3: mail server busy
	// attempt 3 of 3: sent
	// completed after attempt 3
}

// A Fallback runs the tasks no handler is registered for, such as tasks
// added by a newer or older version of the producer. This one fails them
// with ErrUnknownTask, keeping a record of what arrived; the default logs
// a warning and completes them.
func ExampleConfig_fallback() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("fallback")})
	if err != nil {
		log.Fatal(err)
	}

	_, err = q.Add(ctx, LegacyExport{Format: "xls"}, &queue.AddOpts{Key: "export-1"})
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, worker.NewRegistry(), worker.Config{
		Queue:  q.Config(),
		Logger: slog.New(slog.DiscardHandler),
		Fallback: func(ctx context.Context, t *worker.Task[worker.RawArgs]) error {
			fmt.Printf("no handler for %s %s\n", t.Args.Name, t.Args.JSON)
			return fmt.Errorf("%w %s", worker.ErrUnknownTask, t.Args.Name)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}

	ex, err := q.Execution(ctx, "export-1")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.State+":", ex.Error)
	// Output:
	// no handler for legacy_export {"format": "xls"}
	// failed: unknown task legacy_export
}

// A timeout cancels the handler's context and fails the run.
func ExamplePolicy_timeout() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("timeout")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[SlowReport]) error {
		select {
		case <-time.After(time.Minute): // … a slow query …
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, worker.Policy{Timeout: 50 * time.Millisecond})

	if _, err := q.Add(ctx, SlowReport{}, &queue.AddOpts{Key: "report-1"}); err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	ex, err := q.Execution(ctx, "report-1")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.State+":", ex.Error)
	// Output:
	// failed: task report-1 exceeded timeout of 50ms
}
