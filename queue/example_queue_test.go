package queue_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// The task arguments of the examples. A task's arguments are a struct: its
// JSON form is what is stored, and its TaskName names the task.

type SendWelcome struct {
	UserID int `json:"user_id"`
}

func (SendWelcome) TaskName() string { return "send_welcome" }

type BuildReport struct {
	Month string `json:"month"`
}

func (BuildReport) TaskName() string { return "build_report" }

type IndexSearch struct {
	Query string `json:"query"`
}

func (IndexSearch) TaskName() string { return "index_search" }

type SendReceipt struct {
	OrderID int `json:"order_id"`
}

func (SendReceipt) TaskName() string { return "send_receipt" }

type ResizeImage struct {
	Path string `json:"path"`
}

func (ResizeImage) TaskName() string { return "resize_image" }

type SumNumbers struct {
	Numbers []int `json:"numbers"`
}

func (SumNumbers) TaskName() string { return "sum_numbers" }

type ChargeCard struct {
	Customer string  `json:"customer"`
	Amount   float64 `json:"amount"`
}

func (ChargeCard) TaskName() string { return "charge_card" }

// Add stores a task due now under a fresh key, or due later with When.
func ExampleQueue_Add() {
	ctx := context.Background()
	q, err := queue.New(pgtest.ExamplePool(), queue.Config{Name: pgtest.ExampleQueueName("add")})
	if err != nil {
		log.Fatal(err)
	}

	// Due now: a worker may pick it up at once.
	ex, err := q.Add(ctx, SendWelcome{UserID: 42}, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.Task, ex.Disposition, ex.State)

	// Due in an hour.
	ex, err = q.Add(ctx, SendWelcome{UserID: 43}, &queue.AddOpts{When: time.Now().Add(time.Hour)})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.Task, ex.Disposition, ex.State)
	// Output:
	// send_welcome scheduled queued
	// send_welcome scheduled scheduled
}

// A key makes an add idempotent: while a task with the key is scheduled,
// queued or running, adding it again changes nothing. Once it has ended,
// the key can be used again.
func ExampleQueue_Add_key() {
	ctx := context.Background()
	q, err := queue.New(pgtest.ExamplePool(), queue.Config{Name: pgtest.ExampleQueueName("add-key")})
	if err != nil {
		log.Fatal(err)
	}

	opts := &queue.AddOpts{Key: "report-2024-06", When: time.Now().Add(time.Minute)}
	for range 2 {
		ex, err := q.Add(ctx, BuildReport{Month: "2024-06"}, opts)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(ex.Key, ex.Disposition, "generation", ex.Generation)
	}

	// Cancelled, the task has ended: the key is free again.
	if err := q.Cancel(ctx, "report-2024-06"); err != nil {
		log.Fatal(err)
	}
	ex, err := q.Add(ctx, BuildReport{Month: "2024-06"}, opts)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.Key, ex.Disposition, "generation", ex.Generation)
	// Output:
	// report-2024-06 scheduled generation 1
	// report-2024-06 already_scheduled generation 1
	// report-2024-06 scheduled generation 2
}

// Replace overwrites whatever a key holds. Replacing a task and pushing it
// back at every change debounces it: only the last version runs.
func ExampleQueue_Replace() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("replace")})
	if err != nil {
		log.Fatal(err)
	}

	// Every keystroke in a search box replaces the pending indexing task.
	var ex *queue.Execution
	for _, typed := range []string{"s", "sh", "sha", "shadows"} {
		ex, err = q.Replace(ctx, IndexSearch{Query: typed}, queue.AddOpts{
			Key:  "index-search-box",
			When: time.Now().Add(100 * time.Millisecond),
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println("generation", ex.Generation)

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[IndexSearch]) error {
		fmt.Println("indexing", t.Args.Query)
		return nil
	}, worker.Policy{})
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// generation 4
	// indexing shadows
}

// Cancel stops a task that has not run yet; it then never will. Cancelling
// again, or cancelling an unknown key, does nothing.
func ExampleQueue_Cancel() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, err := queue.New(pgtest.ExamplePool(), queue.Config{Name: pgtest.ExampleQueueName("cancel")})
	if err != nil {
		log.Fatal(err)
	}

	_, err = q.Add(ctx, SendWelcome{UserID: 7}, &queue.AddOpts{Key: "welcome-7", When: time.Now().Add(time.Hour)})
	if err != nil {
		log.Fatal(err)
	}
	for range 2 {
		if err := q.Cancel(ctx, "welcome-7"); err != nil {
			log.Fatal(err)
		}
	}

	ex, err := q.Execution(ctx, "welcome-7")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.Key, ex.State)
	_, err = q.Wait(ctx, "welcome-7")
	fmt.Println(errors.Is(err, queue.ErrCancelled))
	// Output:
	// welcome-7 cancelled
	// true
}

// AddTx adds a task inside the caller's transaction: the task exists, and
// wakes workers, only if the transaction commits.
func ExampleQueue_AddTx() {
	ctx := context.Background()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("add-tx")})
	if err != nil {
		log.Fatal(err)
	}

	checkout := func(orderID int, paid bool) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			// … the application's own writes for the order, in tx …
			_, err := q.AddTx(ctx, tx, SendReceipt{OrderID: orderID}, &queue.AddOpts{Key: fmt.Sprint("receipt-", orderID)})
			if err != nil {
				return err
			}
			if !paid {
				return errors.New("payment declined") // rolls back, task included
			}
			return nil
		})
	}

	fmt.Println("order 1:", checkout(1, false))
	fmt.Println("order 2:", checkout(2, true))
	for _, key := range []string{"receipt-1", "receipt-2"} {
		ex, err := q.Execution(ctx, key)
		switch {
		case errors.Is(err, queue.ErrNotFound):
			fmt.Println(key, "not found")
		case err != nil:
			log.Fatal(err)
		default:
			fmt.Println(key, ex.State)
		}
	}
	// Output:
	// order 1: payment declined
	// order 2: <nil>
	// receipt-1 not found
	// receipt-2 queued
}

// AddMany adds a batch in one transaction. Each entry follows Add's rules:
// an entry whose key is live, or repeats an earlier entry's key, is already
// scheduled.
func ExampleQueue_AddMany() {
	ctx := context.Background()
	q, err := queue.New(pgtest.ExamplePool(), queue.Config{Name: pgtest.ExampleQueueName("add-many")})
	if err != nil {
		log.Fatal(err)
	}

	exs, err := q.AddMany(ctx, []queue.Entry{
		{Args: ResizeImage{Path: "a.png"}, Key: "resize-a.png"},
		{Args: ResizeImage{Path: "b.png"}, Key: "resize-b.png", When: time.Now().Add(time.Minute)},
		{Args: ResizeImage{Path: "a.png"}, Key: "resize-a.png"},
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, ex := range exs {
		fmt.Println(ex.Key, ex.Disposition)
	}
	// Output:
	// resize-a.png scheduled
	// resize-b.png scheduled
	// resize-a.png already_scheduled
}

// Result waits for a task to end and decodes the value its handler set with
// Task.SetResult.
func ExampleResult() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("result")})
	if err != nil {
		log.Fatal(err)
	}

	// A worker in the background.
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[SumNumbers]) error {
		sum := 0
		for _, n := range t.Args.Numbers {
			sum += n
		}
		return t.SetResult(sum)
	}, worker.Policy{})
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(runCtx) }()
	defer func() { stop(); <-stopped }()

	ex, err := q.Add(ctx, SumNumbers{Numbers: []int{1, 2, 3, 4}}, nil)
	if err != nil {
		log.Fatal(err)
	}
	sum, err := queue.Result[int](ctx, q, ex.Key)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("sum:", sum)
	// Output:
	// sum: 10
}

// Wait blocks until a task ends. A failed task's error is a *TaskError with
// the message its handler returned.
func ExampleQueue_Wait() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("wait")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[ChargeCard]) error {
		if t.Args.Amount > 1000 {
			return fmt.Errorf("%.2f is over the card's limit", t.Args.Amount)
		}
		return nil
	}, worker.Policy{})
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(runCtx) }()
	defer func() { stop(); <-stopped }()

	for _, amount := range []float64{25, 5000} {
		ex, err := q.Add(ctx, ChargeCard{Customer: "c-1", Amount: amount}, nil)
		if err != nil {
			log.Fatal(err)
		}
		ex, err = q.Wait(ctx, ex.Key)
		var failed *queue.TaskError
		switch {
		case errors.As(err, &failed):
			fmt.Println(ex.Task, ex.State+":", failed.Message)
		case err != nil:
			log.Fatal(err)
		default:
			fmt.Println(ex.Task, ex.State)
		}
	}
	// Output:
	// charge_card completed
	// charge_card failed: 5000.00 is over the card's limit
}

// Snapshot shows what a queue holds: counts, the tasks waiting to start
// (earliest first), the running tasks and the live workers.
func ExampleQueue_Snapshot() {
	ctx := context.Background()
	q, err := queue.New(pgtest.ExamplePool(), queue.Config{Name: pgtest.ExampleQueueName("snapshot")})
	if err != nil {
		log.Fatal(err)
	}

	_, err = q.AddMany(ctx, []queue.Entry{
		{Args: ResizeImage{Path: "a.png"}, Key: "resize-a.png"},
		{Args: ResizeImage{Path: "b.png"}, Key: "resize-b.png"},
		{Args: ResizeImage{Path: "c.png"}, Key: "resize-c.png", When: time.Now().Add(time.Hour)},
	})
	if err != nil {
		log.Fatal(err)
	}

	s, err := q.Snapshot(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d live: %d queued, %d not started, %d running; %d workers\n",
		s.Total, s.Queued, s.FutureCount, s.RunningCount, len(s.Workers))
	for _, t := range s.Future {
		due := "due"
		if t.When.After(s.Taken) {
			due = "in " + t.When.Sub(s.Taken).Round(time.Hour).String()
		}
		fmt.Println(t.Key, t.Task, due)
	}
	// Output:
	// 3 live: 2 queued, 3 not started, 0 running; 0 workers
	// resize-a.png resize_image due
	// resize-b.png resize_image due
	// resize-c.png resize_image in 1h0m0s
}

// Clear removes every task that has not started.
func ExampleQueue_Clear() {
	ctx := context.Background()
	q, err := queue.New(pgtest.ExamplePool(), queue.Config{Name: pgtest.ExampleQueueName("clear")})
	if err != nil {
		log.Fatal(err)
	}

	for i := range 3 {
		if _, err := q.Add(ctx, SendWelcome{UserID: i}, nil); err != nil {
			log.Fatal(err)
		}
	}
	n, err := q.Clear(ctx)
	if err != nil {
		log.Fatal(err)
	}
	s, err := q.Snapshot(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("cleared", n, "left", s.Total)
	// Output:
	// cleared 3 left 0
}
