package queue_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/strike"
	"github.com/shadows-go/shadows/worker"
)

type exProcessOrder struct {
	CustomerID string  `json:"customer_id"`
	Amount     float64 `json:"amount"`
}

func (exProcessOrder) TaskName() string { return "process_order" }

type exSendInvoice struct {
	CustomerID string `json:"customer_id"`
}

func (exSendInvoice) TaskName() string { return "send_invoice" }

type exProcessPayment struct {
	Amount float64 `json:"amount"`
}

func (exProcessPayment) TaskName() string { return "process_payment" }

type exSyncCatalog struct {
	Priority int `json:"priority"` // 1 is the lowest
}

func (exSyncCatalog) TaskName() string { return "sync_catalog" }

// strikeQueue returns a queue for the strike examples. An add that a strike
// refuses logs a warning to the queue's Logger; these examples discard it.
func strikeQueue(prefix string) *queue.Queue {
	q, err := queue.New(pgtest.ExamplePool(), queue.Config{
		Name:   pgtest.ExampleQueueName(prefix),
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	return q
}

// addAndShow adds args and prints what the add did.
func addAndShow(ctx context.Context, q *queue.Queue, args queue.Args) {
	ex, err := q.Add(ctx, args, nil)
	if err != nil {
		log.Fatal(err)
	}
	if ex.Disposition == queue.DispositionStruck {
		fmt.Printf("%s %+v: struck by %s\n", ex.Task, args, ex.StruckBy)
		return
	}
	fmt.Printf("%s %+v: %s\n", ex.Task, args, ex.Disposition)
}

// Strike disables a task without a deploy, for every producer and worker
// of the queue the moment it commits: a struck add stores nothing and
// reports DispositionStruck. Restore re-enables it.
func ExampleQueue_Strike() {
	ctx := context.Background()
	q := strikeQueue("strike-task")

	// Maintenance: no order processing.
	rule := strike.Rule{Task: "process_order"}
	if _, err := q.Strike(ctx, rule); err != nil {
		log.Fatal(err)
	}
	addAndShow(ctx, q, exProcessOrder{CustomerID: "12345", Amount: 10})
	addAndShow(ctx, q, exProcessOrder{CustomerID: "67890", Amount: 20})

	restored, err := q.Restore(ctx, rule)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("restored:", restored)
	addAndShow(ctx, q, exProcessOrder{CustomerID: "12345", Amount: 10})
	// Output:
	// process_order {CustomerID:12345 Amount:10}: struck by process_order
	// process_order {CustomerID:67890 Amount:20}: struck by process_order
	// restored: true
	// process_order {CustomerID:12345 Amount:10}: scheduled
}

// A strike can match argument values, by parameter name (the JSON key),
// for one task or, with Task empty, for every task. Numbers compare as
// numbers and strings as strings.
func ExampleQueue_Strike_parameter() {
	ctx := context.Background()
	q := strikeQueue("strike-parameter")

	for _, rule := range []strike.Rule{
		// A problematic customer, across every task.
		{Param: "customer_id", Op: strike.Eq, Value: "12345"},
		// Low-priority work, under load.
		{Task: "sync_catalog", Param: "priority", Op: strike.Le, Value: 1},
		// Large payments, during a fraud investigation.
		{Task: "process_payment", Param: "amount", Op: strike.Gt, Value: 10000},
	} {
		if _, err := q.Strike(ctx, rule); err != nil {
			log.Fatal(err)
		}
	}
	addAndShow(ctx, q, exProcessOrder{CustomerID: "12345", Amount: 10})
	addAndShow(ctx, q, exSendInvoice{CustomerID: "12345"})
	addAndShow(ctx, q, exSendInvoice{CustomerID: "67890"})
	addAndShow(ctx, q, exSyncCatalog{Priority: 1})
	addAndShow(ctx, q, exSyncCatalog{Priority: 3})
	addAndShow(ctx, q, exProcessPayment{Amount: 25000})
	addAndShow(ctx, q, exProcessPayment{Amount: 500})
	// Output:
	// process_order {CustomerID:12345 Amount:10}: struck by * customer_id == "12345"
	// send_invoice {CustomerID:12345}: struck by * customer_id == "12345"
	// send_invoice {CustomerID:67890}: scheduled
	// sync_catalog {Priority:1}: struck by sync_catalog priority <= 1
	// sync_catalog {Priority:3}: scheduled
	// process_payment {Amount:25000}: struck by process_payment amount > 10000
	// process_payment {Amount:500}: scheduled
}

// A strike naming a task and a parameter stops only that task for that
// value: this customer's orders stop, their invoices still go out.
func ExampleQueue_Strike_taskAndParameter() {
	ctx := context.Background()
	q := strikeQueue("strike-task-parameter")

	rule := strike.Rule{Task: "process_order", Param: "customer_id", Op: strike.Eq, Value: "12345"}
	if _, err := q.Strike(ctx, rule); err != nil {
		log.Fatal(err)
	}
	addAndShow(ctx, q, exProcessOrder{CustomerID: "12345", Amount: 500})
	addAndShow(ctx, q, exSendInvoice{CustomerID: "12345"})
	addAndShow(ctx, q, exProcessOrder{CustomerID: "67890", Amount: 500})
	// Output:
	// process_order {CustomerID:12345 Amount:500}: struck by process_order customer_id == "12345"
	// send_invoice {CustomerID:12345}: scheduled
	// process_order {CustomerID:67890 Amount:500}: scheduled
}

// Separate strikes are independent: a task matching any of them is struck.
// To strike only tasks that match several conditions at once — only the
// high-value orders of one customer — put the conditions in one rule (And).
func ExampleQueue_Strike_conditions() {
	ctx := context.Background()
	q := strikeQueue("strike-conditions")

	// Two strikes: the customer's orders, and every large order.
	customer := strike.Rule{Task: "process_order", Param: "customer_id", Op: strike.Eq, Value: "12345"}
	large := strike.Rule{Task: "process_order", Param: "amount", Op: strike.Gt, Value: 1000}
	for _, r := range []strike.Rule{customer, large} {
		if _, err := q.Strike(ctx, r); err != nil {
			log.Fatal(err)
		}
	}
	addAndShow(ctx, q, exProcessOrder{CustomerID: "67890", Amount: 2000})
	for _, r := range []strike.Rule{customer, large} {
		if _, err := q.Restore(ctx, r); err != nil {
			log.Fatal(err)
		}
	}

	// One strike with two conditions: the customer's large orders only.
	both := strike.Rule{
		Task: "process_order", Param: "customer_id", Op: strike.Eq, Value: "12345",
		And: []strike.Condition{{Param: "amount", Op: strike.Gt, Value: 1000}},
	}
	if _, err := q.Strike(ctx, both); err != nil {
		log.Fatal(err)
	}
	addAndShow(ctx, q, exProcessOrder{CustomerID: "12345", Amount: 500})
	addAndShow(ctx, q, exProcessOrder{CustomerID: "12345", Amount: 2000})
	addAndShow(ctx, q, exProcessOrder{CustomerID: "67890", Amount: 2000})
	// Output:
	// process_order {CustomerID:67890 Amount:2000}: struck by process_order amount > 1000
	// process_order {CustomerID:12345 Amount:500}: scheduled
	// process_order {CustomerID:12345 Amount:2000}: struck by process_order customer_id == "12345" and amount > 1000
	// process_order {CustomerID:67890 Amount:2000}: scheduled
}

// Postgres judges strikes again when a task comes due: a task added before
// the strike is cancelled instead of run, its record naming the strike.
// Tasks already running are never interrupted.
func ExampleQueue_Strike_queued() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q := strikeQueue("strike-queued")

	_, err := q.AddMany(ctx, []queue.Entry{
		{Args: exProcessOrder{CustomerID: "12345", Amount: 50}, Key: "order-1"},
		{Args: exProcessOrder{CustomerID: "67890", Amount: 5000}, Key: "order-2"},
	})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := q.Strike(ctx, strike.Rule{Task: "process_order", Param: "amount", Op: strike.Gt, Value: 1000}); err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exProcessOrder]) error {
		fmt.Println("processing", t.Key)
		return nil
	}, worker.Policy{})
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config()})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	for _, key := range []string{"order-1", "order-2"} {
		ex, err := q.Execution(ctx, key)
		if err != nil {
			log.Fatal(err)
		}
		if ex.Error != "" {
			fmt.Printf("%s %s: %s\n", key, ex.State, ex.Error)
		} else {
			fmt.Println(key, ex.State)
		}
	}
	// Output:
	// processing order-1
	// order-1 completed
	// order-2 cancelled: struck: process_order amount > 1000
}

// A Hold strike keeps matching tasks instead of refusing or cancelling
// them: adds are stored, and due tasks wait, untouched, until the strike is
// restored; then they run.
func ExampleQueue_Strike_hold() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q := strikeQueue("strike-hold")

	hold := strike.Rule{Task: "process_payment", Param: "amount", Op: strike.Gt, Value: 10000, Hold: true}
	if _, err := q.Strike(ctx, hold); err != nil {
		log.Fatal(err)
	}
	addAndShow(ctx, q, exProcessPayment{Amount: 25000})
	addAndShow(ctx, q, exProcessPayment{Amount: 500})

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exProcessPayment]) error {
		fmt.Println("paid", t.Args.Amount)
		return nil
	}, worker.Policy{})
	work := func() { // a worker runs once: a new one each time
		w, err := worker.New(pool, reg, worker.Config{Queue: q.Config()})
		if err != nil {
			log.Fatal(err)
		}
		if err := w.RunUntilFinished(ctx); err != nil { // held tasks do not keep it busy
			log.Fatal(err)
		}
	}
	work()
	s, err := q.Snapshot(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("held:", s.Held)

	if _, err := q.Restore(ctx, hold); err != nil {
		log.Fatal(err)
	}
	work()
	// Output:
	// process_payment {Amount:25000}: scheduled
	// process_payment {Amount:500}: scheduled
	// paid 500
	// held: 1
	// paid 25000
}

// Strikes lists a queue's active strikes with their text form, the form
// logs and the shadows command use; strike.Parse reads it back. The same
// list is a plain table, shadows.strikes.
func ExampleQueue_Strikes() {
	ctx := context.Background()
	pool := pgtest.ExamplePool()
	q := strikeQueue("strikes")

	if _, err := q.Strike(ctx, strike.Rule{Param: "customer_id", Value: "12345"}); err != nil { // Op defaults to ==
		log.Fatal(err)
	}
	rule, err := strike.Parse(`hold process_payment amount between [1000, 5000]`)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := q.Strike(ctx, rule); err != nil {
		log.Fatal(err)
	}

	active, err := q.Strikes(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range active {
		fmt.Println(s.Text)
	}

	rows, err := pool.Query(ctx, `
		SELECT coalesce(task, '*'), path::text, hold
		FROM shadows.strikes WHERE queue = $1 ORDER BY id`, q.Name())
	if err != nil {
		log.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var task, path string
		var hold bool
		if err := rows.Scan(&task, &path, &hold); err != nil {
			log.Fatal(err)
		}
		fmt.Println(task, path, "hold:", hold)
	}
	if err := rows.Err(); err != nil {
		log.Fatal(err)
	}
	// Output:
	// * customer_id == "12345"
	// hold process_payment amount between [1000,5000]
	// * strict $?(@."customer_id".type() == "string" && @."customer_id" == "12345") hold: false
	// process_payment strict $?((@."amount".type() == "number" && @."amount" >= 1000) && @."amount" <= 5000) hold: true
}
