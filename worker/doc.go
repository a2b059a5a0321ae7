// Package worker runs the tasks of a shadows queue.
//
// # Registering handlers
//
// A [Registry] maps task names to handlers. A handler is a function of a
// context and a [*Task] of the task's argument type; the type's TaskName is
// the name it is registered under:
//
//	reg := worker.NewRegistry()
//	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[Resize]) error {
//		img, err := load(ctx, t.Args.ImageID)
//		…
//		return t.SetResult(map[string]int{"bytes": n})
//	}, worker.Policy{Timeout: time.Minute})
//
// The [Task] carries the decoded arguments and the task's own view of its
// run: key, attempt, due time, whether it was redelivered, the worker's name,
// a logger carrying all of these, and the queue, for adding follow-up tasks
// (find-and-flood, chains, fan-out). A handler's long-lived dependencies —
// database pools, HTTP clients — are best captured by the closure or method
// value registered as the handler.
//
// # Policies
//
// The [Policy] given at registration says how the task runs: [Retry] or
// [ExponentialRetry] after failures, a [Policy.Timeout] the handler can read
// and extend ([Timeout]), a [Perpetual] or [Cron] schedule the handler can
// steer ([PerpetualRun]) — automatic ones are seeded by every worker under
// their task name — [ConcurrencyLimit]s per argument value, enforced by
// Postgres across every worker, and admission control ([Cooldown],
// [Debounce], [RateLimit]). The next run of a retried or perpetual task is
// written in the same row update that ends the current run, so no crash can
// lose or double it. Invalid policies fail at registration.
//
// Worker-wide [Middleware] wraps every task; a handler reaches its own
// [Info] (key, attempt, logger, queue) from its Task or, deeper down, with
// [InfoFrom] and [LoggerFrom]. Arguments appear in the start and end log
// lines only when their fields are tagged shadows:"logged" (the value) or
// shadows:"logged,length" (the size). The built-in tasks [Trace], [Fail] and
// [Sleep] are always registered.
//
// # Running
//
// [New] creates a worker for one queue; [Worker.Run] claims due tasks in
// batches sized to its free slots ([Config.Concurrency]) and runs each in its
// own goroutine. An idle worker sleeps until a notification says tasks were
// added, the next future task is due, or [Config.CheckInterval] passes. When
// Run's context is cancelled the worker stops claiming, lets running tasks
// finish, records their outcomes and returns nil.
//
// A handler's return value decides the outcome: nil completes the task, an
// error fails it with the error's text as its record's error, and a panic is
// recovered and fails it with the panic value (the stack is logged). A task
// whose arguments do not decode into the registered type fails with an
// [*ArgsError] naming the task and field; tasks no handler is registered for
// go to [Config.Fallback].
//
// Outcomes are recorded in batches, one statement for whatever ended while
// the previous batch was written. A replaced task's old copy cannot
// overwrite the new record: every write is guarded by the generation the
// worker claimed.
//
// # Leases and crashes
//
// A worker holds a lease on each task it runs ([Config.RedeliveryTimeout])
// and renews it every quarter of that while the task runs, so a long task is
// never run twice. If the worker dies, any worker of the queue runs the task
// again once its lease lapses, marked redelivered. A worker that loses the
// database logs, backs off and resumes on its own.
//
// # Observability
//
// Spans and metrics go to the OpenTelemetry providers of the queue's config
// (the globals by default): one consumer span per run, linked to the trace
// that added the task, and counters, histograms and gauges labelled by
// queue, task and worker. [Worker.Healthy] says whether the claim loop runs
// and reaches the database.
//
// # Connections
//
// A worker keeps one connection of its own for notifications and borrows
// from the pool for claims, outcome batches, lease renewals and heartbeats;
// no transaction stays open while a task runs.
package worker
