// Package queue is the producer side of shadows: it adds tasks to a named
// queue in PostgreSQL, replaces and cancels them, and reads their records and
// the queue's state.
//
// # Tasks
//
// A task is a value of a type implementing [Args]: a struct whose JSON form
// (an object) is stored as the task's arguments, and whose TaskName method
// names the handler that runs it. JSON keys are the parameter names the rest
// of shadows refers to, so give every field a json tag.
//
//	type Resize struct {
//		ImageID string `json:"image_id"`
//		Width   int    `json:"width"`
//	}
//
//	func (Resize) TaskName() string { return "resize" }
//
// # Adding
//
// [Queue.Add] stores a task, due now or at [AddOpts.When], under
// [AddOpts.Key] or a fresh UUIDv7. Keys make adds idempotent: while a key is
// scheduled, queued or running, adding it again changes nothing and reports
// [DispositionAlreadyScheduled]. Once its record has ended (completed,
// failed, cancelled) the key can be added again. [Queue.Replace] overwrites
// whatever a key holds, and [Queue.Cancel] stops it. [Queue.AddMany] stores a
// batch in one statement per 5,000 tasks.
//
// Every write has a Tx twin ([Queue.AddTx], [Queue.ReplaceTx],
// [Queue.CancelTx], [Queue.AddManyTx]) taking the caller's pgx.Tx: the task
// exists, and workers hear of it, only if that transaction commits. This is
// the way to add a task together with the data it works on.
//
// # Records and results
//
// Each key has one record, read with [Queue.Execution]: its [State], when it
// is due, its attempt, the worker that ran it, start and end times, error
// text, result and whether it was redelivered. [Queue.Wait] blocks until a
// task ends and returns its outcome as an error: nil, a [*TaskError], or
// [ErrCancelled]; [Result] also decodes the value the handler produced.
// Records are kept for [Config.ExecutionTTL] after a task ends.
//
// # Inspecting
//
// [Queue.Snapshot] reads counts, pending and running tasks and live workers;
// [Queue.Workers] and [Queue.TaskWorkers] list workers; [Queue.Clear] removes
// every task that has not started. All of it is also plain SQL over the
// shadows schema: see the README.
//
// A Queue is safe for concurrent use. It holds no connection of its own:
// every call borrows one from the pool, and Wait holds it while it waits.
package queue
