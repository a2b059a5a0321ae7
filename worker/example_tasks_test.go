package worker_test

import (
	"context"
	"fmt"
	"log"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

type exProcessPayment struct {
	CustomerID string  `json:"customer_id" shadows:"logged"`
	CreditCard string  `json:"credit_card"` // never logged
	Amount     float64 `json:"amount"      shadows:"logged"`
	TraceID    string  `json:"trace_id"    shadows:"logged"`
}

func (exProcessPayment) TaskName() string { return "process_payment" }

type exBulkUpdateUsers struct {
	UserIDs  []string            `json:"user_ids" shadows:"logged,length"`
	Metadata map[string]string   `json:"metadata" shadows:"logged,length"`
	Options  map[string]struct{} `json:"options"  shadows:"logged,length"`
}

func (exBulkUpdateUsers) TaskName() string { return "bulk_update_users" }

type exDataPipeline struct {
	DatasetID string `json:"dataset_id" shadows:"logged"`
}

func (exDataPipeline) TaskName() string { return "data_pipeline" }

type exAnalyzeUserBehavior struct {
	UserID string `json:"user_id"`
}

func (exAnalyzeUserBehavior) TaskName() string { return "analyze_user_behavior" }

type exRetentionCampaign struct {
	UserID string `json:"user_id"`
}

func (exRetentionCampaign) TaskName() string { return "create_retention_campaign" }

type exUpsellCampaign struct {
	UserID string `json:"user_id"`
}

func (exUpsellCampaign) TaskName() string { return "create_upsell_campaign" }

type exSendInvoice struct {
	InvoiceID int `json:"invoice_id"`
}

func (exSendInvoice) TaskName() string { return "send_invoice" }

type exSendSurvey struct {
	UserID string `json:"user_id"`
}

func (exSendSurvey) TaskName() string { return "send_survey" }

type exInvoiceTotal struct {
	Net float64 `json:"net"`
}

func (exInvoiceTotal) TaskName() string { return "invoice_total" }

type exImportUsers struct {
	File string `json:"file"`
	Rows int    `json:"rows"`
}

func (exImportUsers) TaskName() string { return "import_users" }

// Arguments show in the worker's start (↪) and end (↩) lines only when
// their field is tagged `shadows:"logged"`; the others show as "...", so
// secrets such as card numbers stay out of the logs by default. Log lines
// go to the worker's Logger, in whatever format its slog.Handler writes.
func ExampleRegister_argumentLogging() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("argument-logging")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exProcessPayment]) error {
		return nil // … charge the card …
	}, worker.Policy{})

	_, err = q.Add(ctx, exProcessPayment{
		CustomerID: "12345", CreditCard: "4111 1111 1111 1111", Amount: 150, TraceID: "abc-123",
	}, &queue.AddOpts{Key: "payment-1"})
	if err != nil {
		log.Fatal(err)
	}
	// stdoutLogger is a slog text handler on standard output that leaves
	// out what changes between runs (times, durations, the queue's name).
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Name: "worker-1", Logger: stdoutLogger()})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// level=INFO msg="↪ process_payment(customer_id=\"12345\", credit_card=..., amount=150, trace_id=\"abc-123\")" worker=worker-1 task=process_payment key=payment-1 attempt=1
	// level=INFO msg="↩ process_payment(customer_id=\"12345\", credit_card=..., amount=150, trace_id=\"abc-123\")" worker=worker-1 task=process_payment key=payment-1 attempt=1 state=completed
}

// For large collections, `shadows:"logged,length"` logs the size only:
// [len N] for slices, arrays and strings, {len N} for maps.
func ExampleRegister_lengthLogging() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("length-logging")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exBulkUpdateUsers]) error {
		return nil // … update the users …
	}, worker.Policy{})

	users := make([]string, 150)
	for i := range users {
		users[i] = fmt.Sprint("user-", i)
	}
	_, err = q.Add(ctx, exBulkUpdateUsers{
		UserIDs:  users,
		Metadata: map[string]string{"source": "crm", "batch": "7", "region": "eu", "owner": "ops", "dry_run": "no"},
		Options:  map[string]struct{}{"notify": {}, "audit": {}, "reindex": {}},
	}, &queue.AddOpts{Key: "bulk-7"})
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Name: "worker-1", Logger: stdoutLogger()})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// level=INFO msg="↪ bulk_update_users(user_ids=[len 150], metadata={len 5}, options={len 3})" worker=worker-1 task=bulk_update_users key=bulk-7 attempt=1
	// level=INFO msg="↩ bulk_update_users(user_ids=[len 150], metadata={len 5}, options={len 3})" worker=worker-1 task=bulk_update_users key=bulk-7 attempt=1 state=completed
}

// extractData stands for code deep inside a task, which has no Task to
// hand: the context carries the task's logger and view of itself.
func extractData(ctx context.Context, dataset string) int {
	rows := 1200 // … read dataset …
	worker.LoggerFrom(ctx).Info("extracted", "rows", rows)
	if info, ok := worker.InfoFrom(ctx); ok && info.Attempt > 1 {
		worker.LoggerFrom(ctx).Warn("extracting again after a failure")
	}
	return rows
}

// The task logger (Task.Logger, or LoggerFrom for code that only has the
// context) carries the worker, task name, key and attempt on every line.
// Outside a task, LoggerFrom returns slog.Default().
func ExampleLoggerFrom() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("task-logger")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exDataPipeline]) error {
		t.Logger.Info("starting pipeline")
		rows := extractData(ctx, t.Args.DatasetID)
		// … transform and load …
		t.Logger.Info("pipeline done", "rows", rows)
		return nil
	}, worker.Policy{})

	if _, err := q.Add(ctx, exDataPipeline{DatasetID: "ds-9"}, &queue.AddOpts{Key: "pipeline-ds-9"}); err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Name: "worker-1", Logger: stdoutLogger()})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// level=INFO msg="↪ data_pipeline(dataset_id=\"ds-9\")" worker=worker-1 task=data_pipeline key=pipeline-ds-9 attempt=1
	// level=INFO msg="starting pipeline" worker=worker-1 task=data_pipeline key=pipeline-ds-9 attempt=1
	// level=INFO msg=extracted worker=worker-1 task=data_pipeline key=pipeline-ds-9 attempt=1 rows=1200
	// level=INFO msg="pipeline done" worker=worker-1 task=data_pipeline key=pipeline-ds-9 attempt=1 rows=1200
	// level=INFO msg="↩ data_pipeline(dataset_id=\"ds-9\")" worker=worker-1 task=data_pipeline key=pipeline-ds-9 attempt=1 state=completed
}

// Every registry holds three built-in tasks: Trace logs its message (a
// milestone in a queue's log), Fail fails with its message and is retried
// once (to test alerting), and Sleep sleeps (synthetic load). A producer
// adds them like any task.
func ExampleTrace() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("builtins")})
	if err != nil {
		log.Fatal(err)
	}

	_, err = q.AddMany(ctx, []queue.Entry{
		{Args: worker.Trace{Message: "system startup completed"}, Key: "trace-startup"},
		{Args: worker.Fail{Message: "testing error notifications"}, Key: "fail-test"},
		{Args: worker.Sleep{Seconds: 0.05}, Key: "sleep-50ms"},
	})
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, worker.NewRegistry(), worker.Config{Queue: q.Config(), Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	for _, key := range []string{"trace-startup", "fail-test", "sleep-50ms"} {
		ex, err := q.Execution(ctx, key)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %s %s after %d attempt(s)", key, ex.Task, ex.State, ex.Attempt)
		if ex.Error != "" {
			// The message is followed by the key, queue, age and worker.
			msg, _, _ := strings.Cut(ex.Error, ":")
			fmt.Printf(": %s", msg)
		}
		fmt.Println()
	}
	// Output:
	// trace-startup: trace completed after 1 attempt(s)
	// fail-test: fail failed after 2 attempt(s): testing error notifications
	// sleep-50ms: sleep completed after 1 attempt(s)
}

// A conditional workflow: a task decides what to schedule next. Here each
// user's analysis leads to a retention campaign, an upsell campaign, or a
// follow-up analysis in 30 days under a key of its own, so a user never has
// two follow-ups waiting.
func ExampleWorker_Run_conditional() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("conditional")})
	if err != nil {
		log.Fatal(err)
	}

	// Stands in for what the behaviour data says about each user.
	signals := map[string]string{"u-1": "churn risk", "u-2": "upsell opportunity", "u-3": "satisfied"}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exAnalyzeUserBehavior]) error {
		id := t.Args.UserID
		var err error
		switch signals[id] {
		case "churn risk":
			_, err = t.Queue.Add(ctx, exRetentionCampaign{UserID: id}, &queue.AddOpts{Key: "campaign-" + id})
		case "upsell opportunity":
			_, err = t.Queue.Add(ctx, exUpsellCampaign{UserID: id}, &queue.AddOpts{Key: "campaign-" + id})
		case "satisfied":
			_, err = t.Queue.Add(ctx, t.Args, &queue.AddOpts{
				Key:  "behavior-check-" + id,
				When: time.Now().Add(30 * 24 * time.Hour),
			})
		}
		return err
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exRetentionCampaign]) error {
		return nil // … create the campaign …
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exUpsellCampaign]) error {
		return nil // … create the campaign …
	}, worker.Policy{})

	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(runCtx) }()
	defer func() { stop(); <-stopped }()

	for _, id := range []string{"u-1", "u-2", "u-3"} {
		if _, err := q.Add(ctx, exAnalyzeUserBehavior{UserID: id}, &queue.AddOpts{Key: "analyze-" + id}); err != nil {
			log.Fatal(err)
		}
	}
	for _, key := range []string{"campaign-u-1", "campaign-u-2"} {
		ex, err := q.Wait(ctx, key)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(key, ex.Task, ex.State)
	}
	if _, err := q.Wait(ctx, "analyze-u-3"); err != nil {
		log.Fatal(err)
	}
	ex, err := q.Execution(ctx, "behavior-check-u-3")
	if err != nil {
		log.Fatal(err)
	}
	days := math.Round(time.Until(ex.When).Hours() / 24)
	fmt.Println(ex.Key, ex.Task, ex.State, "in", days, "days")
	// Output:
	// campaign-u-1 create_retention_campaign completed
	// campaign-u-2 create_upsell_campaign completed
	// behavior-check-u-3 analyze_user_behavior scheduled in 30 days
}

// Middleware wraps every task a worker runs, the first outermost: setup
// before next, teardown after it. A middleware that returns without calling
// next fails the task without running its handler.
func ExampleMiddleware() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("middleware")})
	if err != nil {
		log.Fatal(err)
	}

	announce := func(ctx context.Context, info *worker.Info, next func(context.Context) error) error {
		fmt.Println("→", info.Name, info.Key)
		err := next(ctx)
		fmt.Println("←", info.Name, info.Key, "error:", err)
		return err
	}
	switchedOff := map[string]bool{"send_survey": true}
	featureFlags := func(ctx context.Context, info *worker.Info, next func(context.Context) error) error {
		if switchedOff[info.Name] {
			return fmt.Errorf("%s is switched off", info.Name) // the handler never runs
		}
		fmt.Println("  flags checked")
		defer fmt.Println("  flags released")
		return next(ctx)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exSendInvoice]) error {
		fmt.Println("    invoice", t.Args.InvoiceID, "sent")
		return nil
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exSendSurvey]) error {
		fmt.Println("    survey sent")
		return nil
	}, worker.Policy{})

	_, err = q.AddMany(ctx, []queue.Entry{
		{Args: exSendInvoice{InvoiceID: 1}, Key: "invoice-1"},
		{Args: exSendSurvey{UserID: "u-1"}, Key: "survey-u-1"},
	})
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{
		Queue:       q.Config(),
		Concurrency: 1, // one at a time, in order, for the example
		Middleware:  []worker.Middleware{announce, featureFlags},
		Logger:      discard,
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	ex, err := q.Execution(ctx, "survey-u-1")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.Key, ex.State+":", ex.Error)
	// Output:
	// → send_invoice invoice-1
	//   flags checked
	//     invoice 1 sent
	//   flags released
	// ← send_invoice invoice-1 error: <nil>
	// → send_survey survey-u-1
	// ← send_survey survey-u-1 error: send_survey is switched off
	// survey-u-1 failed: send_survey is switched off
}

// invoices holds what its handlers need for the life of the process: a
// database pool, clients, settings. Its methods are registered as handlers,
// so every task reaches them without globals.
type invoices struct {
	pool *pgxpool.Pool
	vat  float64
}

func (s *invoices) total(ctx context.Context, t *worker.Task[exInvoiceTotal]) error {
	var total float64
	err := s.pool.QueryRow(ctx, `SELECT round($1::numeric * (1 + $2::numeric), 2)`, t.Args.Net, s.vat).Scan(&total)
	if err != nil {
		return err
	}
	return t.SetResult(total)
}

// Shared dependencies: long-lived values such as a database pool or an HTTP
// client are captured by the handler, a method value or a closure, when it
// is registered.
func ExampleRegister_dependencies() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("dependencies")})
	if err != nil {
		log.Fatal(err)
	}

	svc := &invoices{pool: pool, vat: 0.21}
	reg := worker.NewRegistry()
	worker.MustRegister(reg, svc.total, worker.Policy{})

	ex, err := q.Add(ctx, exInvoiceTotal{Net: 100}, nil)
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	total, err := queue.Result[float64](ctx, q, ex.Key)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("total:", total)
	// Output:
	// total: 121
}

// A handler reports how far it has got: a total, increments or the current
// count, and a message. Each report lands on the task's record at once, so
// producers (Execution.Progress) and `shadows watch` see it while the task
// runs, and it stays there afterwards.
func ExampleProgress() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("progress")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exImportUsers]) error {
		p := t.Progress
		if err := p.SetTotal(ctx, int64(t.Args.Rows)); err != nil {
			return err
		}
		const batch = 25
		for done := 0; done < t.Args.Rows; done += batch {
			// … import one batch of rows …
			if err := p.Increment(ctx, batch); err != nil {
				return err
			}
		}
		return p.SetMessage(ctx, "imported "+t.Args.File)
	}, worker.Policy{})

	if _, err := q.Add(ctx, exImportUsers{File: "users.csv", Rows: 100}, &queue.AddOpts{Key: "import-users"}); err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	ex, err := q.Execution(ctx, "import-users")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s %s: %d/%d, %q\n", ex.Key, ex.State, ex.Progress.Current, ex.Progress.Total, ex.Progress.Message)
	// Output:
	// import-users completed: 100/100, "imported users.csv"
}
