// Package reliability holds the multi-process reliability tests of shadows
// and what they share with their worker program, testworker: the task they
// run and the ledger table in which every run of it leaves a row.
//
// The tests start testworker as real operating-system processes against a
// real PostgreSQL server, then kill, stop and disconnect them, and read the
// ledger and the execution records back to check what DESIGN.md promises:
// no task is ever lost, without crashes each runs exactly once, a task whose
// worker was killed runs again elsewhere once its lease lapses, and workers
// resume on their own after losing their connections.
package reliability

// TaskName is the name the tests' task is registered and added under.
const TaskName = "reliability_job"

// Job is the arguments of the tests' task: its handler records the run in
// the ledger, sleeps SleepMS milliseconds and records the end of the run.
type Job struct {
	SleepMS int `json:"sleep_ms"`
}

// TaskName returns [TaskName].
func (Job) TaskName() string { return TaskName }

// LedgerDDL creates the ledger table if it does not exist. Each run of a
// task adds one row, identified by a random run_id, when its handler
// starts, and sets finished_at when the handler is done. Rows of
// different tests are told apart by queue.
//
// Several tests may run it at once: it takes a transaction-level advisory
// lock first, so run it inside a transaction.
const LedgerDDL = `
SELECT pg_advisory_xact_lock(7262501);
CREATE TABLE IF NOT EXISTS public.reliability_ledger (
    run_id      text        PRIMARY KEY,
    queue       text        NOT NULL,
    key         text        NOT NULL,
    worker      text        NOT NULL,
    attempt     integer     NOT NULL,
    redelivered boolean     NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS reliability_ledger_queue_key ON public.reliability_ledger (queue, key);
`

// The statements testworker runs for each run. Both are idempotent, so a
// statement whose connection was lost may be sent again without counting a
// run twice.
const (
	// LedgerStart records the start of a run:
	// $1 run_id, $2 queue, $3 key, $4 worker, $5 attempt, $6 redelivered.
	LedgerStart = `INSERT INTO public.reliability_ledger (run_id, queue, key, worker, attempt, redelivered)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id) DO NOTHING`
	// LedgerFinish records the end of run $1.
	LedgerFinish = `UPDATE public.reliability_ledger SET finished_at = clock_timestamp()
WHERE run_id = $1 AND finished_at IS NULL`
)
