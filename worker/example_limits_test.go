package worker_test

import (
	"context"
	"fmt"
	"log"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// The concurrency examples hold their tasks at a gate while they look at
// the slots (see example_helpers_test.go), so their output is the same on
// every run; a real handler would just do its work.

type exCustomerData struct {
	CustomerID int `json:"customer_id"`
}

func (exCustomerData) TaskName() string { return "process_customer_data" }

type exBackupTable struct {
	DBName    string `json:"db_name"`
	TableName string `json:"table_name"`
}

func (exBackupTable) TaskName() string { return "backup_database_table" }

type exSyncUser struct {
	UserID      int    `json:"user_id"`
	ServiceName string `json:"service_name"`
}

func (exSyncUser) TaskName() string { return "sync_user_with_external_service" }

type exMediaFile struct {
	FilePath      string `json:"file_path"`
	OperationType string `json:"operation_type"`
}

func (exMediaFile) TaskName() string { return "process_media_file" }

type exTenantOperation struct {
	TenantID  string `json:"tenant_id"`
	Operation string `json:"operation"`
}

func (exTenantOperation) TaskName() string { return "process_tenant_data" }

type exTenantReport struct {
	TenantID string `json:"tenant_id"`
}

func (exTenantReport) TaskName() string { return "build_tenant_report" }

type exUserExport struct {
	UserID     int    `json:"user_id"`
	ExportType string `json:"export_type"`
	Region     string `json:"region"`
}

func (exUserExport) TaskName() string { return "process_user_export" }

type exPageOnCall struct {
	Service string `json:"service"`
}

func (exPageOnCall) TaskName() string { return "page_on_call" }

type exReindex struct {
	Index string `json:"index"`
}

func (exReindex) TaskName() string { return "reindex" }

type exSendSMS struct {
	Phone string `json:"phone"`
}

func (exSendSMS) TaskName() string { return "send_sms" }

// A concurrency limit per argument value: one task per customer at a time,
// across every worker of the queue. The other customers' tasks run
// alongside; the customer's own wait, first come first served, without
// being claimed again and without spending an attempt.
func ExampleConcurrencyLimit() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("per-customer")})
	if err != nil {
		log.Fatal(err)
	}

	g := newGate()
	var (
		mu  sync.Mutex
		ran []string
	)
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exCustomerData]) error {
		mu.Lock()
		ran = append(ran, t.Key)
		mu.Unlock()
		return g.enter(ctx, t.Key) // … update the profile, recalculate metrics …
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "customer_id", Max: 1}}})

	add := func(customer int, key string) {
		if _, err := q.Add(ctx, exCustomerData{CustomerID: customer}, &queue.AddOpts{Key: key}); err != nil {
			log.Fatal(err)
		}
	}
	add(1001, "1001-a")
	add(2001, "2001-a")
	add(3001, "3001-a")
	wait := runInBackground(ctx, pool, reg, q)
	g.await(ctx, 3) // three customers, three tasks running at once

	add(1001, "1001-b")
	add(1001, "1001-c")
	waitForWaiting(ctx, q, 2)
	ex, err := q.Execution(ctx, "1001-b")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.Key, ex.State, "waiting on", ex.WaitingOn)
	printSlots(ctx, pool, q)

	g.open()
	wait()
	fmt.Println("customer 1001's tasks ran in turn:", slices.DeleteFunc(ran, func(k string) bool { return !strings.HasPrefix(k, "1001") }))
	// Output:
	// 1001-b queued waiting on customer_id:1001
	// customer_id:1001: 1 running, at most 1
	// customer_id:2001: 1 running, at most 1
	// customer_id:3001: 1 running, at most 1
	// 2 waiting for a slot
	// customer 1001's tasks ran in turn: [1001-a 1001-b 1001-c]
}

// At most two backups per database at once, to spare its connections.
func ExampleConcurrencyLimit_perDatabase() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("per-database")})
	if err != nil {
		log.Fatal(err)
	}

	g := newGate()
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exBackupTable]) error {
		return g.enter(ctx, t.Key) // … back up the table, verify the backup …
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "db_name", Max: 2}}})

	var backups []queue.Entry
	for _, table := range []string{"users", "orders", "products"} {
		for _, db := range []string{"production", "staging"} {
			backups = append(backups, queue.Entry{Args: exBackupTable{DBName: db, TableName: table}})
		}
	}
	if _, err := q.AddMany(ctx, backups); err != nil {
		log.Fatal(err)
	}
	wait := runInBackground(ctx, pool, reg, q)
	g.await(ctx, 4)
	waitForWaiting(ctx, q, 2)
	printSlots(ctx, pool, q)
	g.open()
	wait()
	// Output:
	// db_name:production: 2 running, at most 2
	// db_name:staging: 2 running, at most 2
	// 2 waiting for a slot
}

// At most five calls at once to each external service; a call to another
// service does not wait behind them.
func ExampleConcurrencyLimit_perService() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("per-service")})
	if err != nil {
		log.Fatal(err)
	}

	g := newGate()
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exSyncUser]) error {
		return g.enter(ctx, t.Key) // … fetch the user, call the service's API …
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "service_name", Max: 5}}})

	var syncs []queue.Entry
	for user := range 6 {
		syncs = append(syncs, queue.Entry{Args: exSyncUser{UserID: 100 + user, ServiceName: "salesforce"}})
	}
	syncs = append(syncs, queue.Entry{Args: exSyncUser{UserID: 789, ServiceName: "hubspot"}})
	if _, err := q.AddMany(ctx, syncs); err != nil {
		log.Fatal(err)
	}
	wait := runInBackground(ctx, pool, reg, q)
	g.await(ctx, 6)
	waitForWaiting(ctx, q, 1)
	printSlots(ctx, pool, q)
	g.open()
	wait()
	// Output:
	// service_name:hubspot: 1 running, at most 5
	// service_name:salesforce: 5 running, at most 5
	// 1 waiting for a slot
}

// At most three operations of each type at once: three transcodes and three
// resizes may run together, a fourth transcode waits.
func ExampleConcurrencyLimit_perOperationType() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("per-operation")})
	if err != nil {
		log.Fatal(err)
	}

	g := newGate()
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exMediaFile]) error {
		return g.enter(ctx, t.Key) // … transcode, resize or compress …
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "operation_type", Max: 3}}})

	var files []queue.Entry
	for i := range 4 {
		files = append(files, queue.Entry{Args: exMediaFile{FilePath: fmt.Sprintf("/videos/movie%d.mp4", i), OperationType: "video_transcode"}})
	}
	files = append(files, queue.Entry{Args: exMediaFile{FilePath: "/images/photo1.jpg", OperationType: "image_resize"}})
	if _, err := q.AddMany(ctx, files); err != nil {
		log.Fatal(err)
	}
	wait := runInBackground(ctx, pool, reg, q)
	g.await(ctx, 4)
	waitForWaiting(ctx, q, 1)
	printSlots(ctx, pool, q)
	g.open()
	wait()
	// Output:
	// operation_type:image_resize: 1 running, at most 3
	// operation_type:video_transcode: 3 running, at most 3
	// 1 waiting for a slot
}

// Limits are shared by key, "argument:value": two tasks limited on the same
// argument and value share its slots. A Scope gives a limit keys of its
// own. Here a tenant may run two data operations and, independently, one
// report at a time.
func ExampleConcurrencyLimit_scopes() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("scopes")})
	if err != nil {
		log.Fatal(err)
	}

	g := newGate()
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exTenantOperation]) error {
		return g.enter(ctx, t.Key)
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "tenant_id", Max: 2, Scope: "tenant_operations"}}})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exTenantReport]) error {
		return g.enter(ctx, t.Key)
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "tenant_id", Max: 1, Scope: "tenant_reports"}}})

	_, err = q.AddMany(ctx, []queue.Entry{
		{Args: exTenantOperation{TenantID: "acme", Operation: "import"}},
		{Args: exTenantOperation{TenantID: "acme", Operation: "reindex"}},
		{Args: exTenantOperation{TenantID: "acme", Operation: "purge"}},
		{Args: exTenantReport{TenantID: "acme"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	wait := runInBackground(ctx, pool, reg, q)
	g.await(ctx, 3)
	waitForWaiting(ctx, q, 1)
	printSlots(ctx, pool, q)
	g.open()
	wait()
	// Output:
	// tenant_operations/tenant_id:acme: 2 running, at most 2
	// tenant_reports/tenant_id:acme: 1 running, at most 1
	// 1 waiting for a slot
}

// A task may carry several limits; it starts only when every one of them
// has a free slot. Here: one export per user, three per export type, ten
// per region. A waiting task's record names the limit it waits on.
func ExampleConcurrencyLimit_multiLevel() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("multi-level")})
	if err != nil {
		log.Fatal(err)
	}

	g := newGate()
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exUserExport]) error {
		return g.enter(ctx, t.Key) // … generate the export …
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{
		{Arg: "user_id", Max: 1},
		{Arg: "export_type", Max: 3},
		{Arg: "region", Max: 10},
	}})

	add := func(key string, user int, exportType, region string) {
		_, err := q.Add(ctx, exUserExport{UserID: user, ExportType: exportType, Region: region}, &queue.AddOpts{Key: key})
		if err != nil {
			log.Fatal(err)
		}
	}
	add("export-1-csv", 1, "csv", "eu")
	add("export-2-csv", 2, "csv", "eu")
	add("export-3-csv", 3, "csv", "us")
	wait := runInBackground(ctx, pool, reg, q)
	g.await(ctx, 3)

	add("export-1-pdf", 1, "pdf", "eu") // user 1 already has an export running
	add("export-4-csv", 4, "csv", "us") // three csv exports are running
	waitForWaiting(ctx, q, 2)
	for _, key := range []string{"export-1-pdf", "export-4-csv"} {
		ex, err := q.Execution(ctx, key)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(key, "waits on", ex.WaitingOn)
	}
	printSlots(ctx, pool, q)
	g.open()
	wait()
	// Output:
	// export-1-pdf waits on user_id:1
	// export-4-csv waits on export_type:csv
	// export_type:csv: 3 running, at most 3
	// region:eu: 2 running, at most 10
	// region:us: 1 running, at most 10
	// user_id:1: 1 running, at most 1
	// user_id:2: 1 running, at most 1
	// user_id:3: 1 running, at most 1
	// 2 waiting for a slot
}

// Slots are rows, so plain SQL answers "how many tasks run for customer
// 1001?" and "which limit keys are in use?": the view shadows.concurrency
// has a row per queue and limit key with the tasks running under it. The
// tasks waiting for a slot are counted by Snapshot, and each one's record
// names the key it waits on.
func ExampleConcurrencyLimit_monitoring() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("monitoring")})
	if err != nil {
		log.Fatal(err)
	}

	g := newGate()
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exCustomerData]) error {
		return g.enter(ctx, t.Key)
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "customer_id", Max: 1}}})

	_, err = q.AddMany(ctx, []queue.Entry{
		{Args: exCustomerData{CustomerID: 1001}, Key: "1001-a"},
		{Args: exCustomerData{CustomerID: 2001}, Key: "2001-a"},
	})
	if err != nil {
		log.Fatal(err)
	}
	wait := runInBackground(ctx, pool, reg, q)
	g.await(ctx, 2)
	if _, err := q.Add(ctx, exCustomerData{CustomerID: 1001}, &queue.AddOpts{Key: "1001-b"}); err != nil {
		log.Fatal(err)
	}
	waitForWaiting(ctx, q, 1)

	var running int
	err = pool.QueryRow(ctx, `
		SELECT running FROM shadows.concurrency
		WHERE queue = $1 AND limit_key = 'customer_id:1001'`, q.Name()).Scan(&running)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("customer 1001 has %d running task(s)\n", running)

	rows, err := pool.Query(ctx, `
		SELECT limit_key, running FROM shadows.concurrency
		WHERE queue = $1 ORDER BY limit_key`, q.Name())
	if err != nil {
		log.Fatal(err)
	}
	for rows.Next() {
		var key string
		var n int
		if err := rows.Scan(&key, &n); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d running\n", key, n)
	}
	if err := rows.Err(); err != nil {
		log.Fatal(err)
	}

	s, err := q.Snapshot(ctx)
	if err != nil {
		log.Fatal(err)
	}
	ex, err := q.Execution(ctx, "1001-b")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d waiting; %s waits on %s\n", s.Waiting, ex.Key, ex.WaitingOn)
	g.open()
	wait()
	// Output:
	// customer 1001 has 1 running task(s)
	// customer_id:1001: 1 running
	// customer_id:2001: 1 running
	// 1 waiting; 1001-b waits on customer_id:1001
}

// A cooldown drops a run that starts within Window of the previous run of
// the same key: here the on-call engineer is paged at most once per 10
// minutes per service. A dropped run ends cancelled, its record naming the
// rule; it is not a failure.
func ExampleCooldown() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("cooldown")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exPageOnCall]) error {
		fmt.Println("paging on-call for", t.Args.Service)
		return nil
	}, worker.Policy{Cooldown: []worker.Cooldown{{Arg: "service", Window: 10 * time.Minute}}})

	_, err = q.AddMany(ctx, []queue.Entry{
		{Args: exPageOnCall{Service: "checkout"}, Key: "page-1"},
		{Args: exPageOnCall{Service: "checkout"}, Key: "page-2"},
		{Args: exPageOnCall{Service: "search"}, Key: "page-3"},
	})
	if err != nil {
		log.Fatal(err)
	}
	// One at a time, so that the pages start in the order they were added.
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Concurrency: 1, Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	for _, key := range []string{"page-1", "page-2", "page-3"} {
		printRecord(ctx, q, key)
	}
	// Output:
	// paging on-call for checkout
	// paging on-call for search
	// page-1 completed
	// page-2 cancelled: dropped by cooldown service:checkout
	// page-3 completed
}

// A debounce runs a task once, after its submissions settle: the first
// submission waits Settle; each later one of the same key is dropped and
// pushes the settling on. Here a burst of edits triggers one reindex.
func ExampleDebounce() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("debounce")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exReindex]) error {
		fmt.Println("reindexing", t.Args.Index)
		return nil
	}, worker.Policy{Debounce: &worker.Debounce{Arg: "index", Settle: 100 * time.Millisecond}})

	var edits []queue.Entry
	for i := 1; i <= 3; i++ {
		edits = append(edits, queue.Entry{Args: exReindex{Index: "products"}, Key: fmt.Sprint("edit-", i)})
	}
	if _, err := q.AddMany(ctx, edits); err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Concurrency: 1, Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	for _, e := range edits {
		printRecord(ctx, q, e.Key)
	}
	// Output:
	// reindexing products
	// edit-1 completed
	// edit-2 cancelled: dropped by debounce index:products
	// edit-3 cancelled: dropped by debounce index:products
}

// A rate limit lets at most Limit runs of a key start within any Per. The
// excess waits until the window lets it in or, with Drop, is dropped: here
// a phone number gets at most two text messages an hour.
func ExampleRateLimit() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("rate-limit")})
	if err != nil {
		log.Fatal(err)
	}

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exSendSMS]) error {
		return nil // … send the message …
	}, worker.Policy{RateLimit: []worker.RateLimit{{Arg: "phone", Limit: 2, Per: time.Hour, Drop: true}}})

	messages := []queue.Entry{
		{Args: exSendSMS{Phone: "+15550100"}, Key: "sms-1"},
		{Args: exSendSMS{Phone: "+15550100"}, Key: "sms-2"},
		{Args: exSendSMS{Phone: "+15550100"}, Key: "sms-3"},
		{Args: exSendSMS{Phone: "+15550199"}, Key: "sms-4"},
	}
	if _, err := q.AddMany(ctx, messages); err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Concurrency: 1, Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	for _, m := range messages {
		printRecord(ctx, q, m.Key)
	}
	// Output:
	// sms-1 completed
	// sms-2 completed
	// sms-3 cancelled: dropped by rate limit phone:+15550100 per 1h0m0s
	// sms-4 completed
}
