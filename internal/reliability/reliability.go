// Package reliability holds the multi-process reliability tests of shadows
// and what they share with their worker program, testworker: the tasks it
// runs and the ledger table in which every run of them leaves a row.
//
// The tests start testworker as real operating-system processes against a
// real PostgreSQL server, then kill, stop and disconnect them, and read the
// ledger and the execution records back to check what DESIGN.md promises:
// no task is ever lost, without crashes each runs exactly once, a task whose
// worker was killed runs again elsewhere once its lease lapses, and workers
// resume on their own after losing their connections. Further tests check,
// across processes, that concurrency limits hold fleet-wide and free the
// slots of killed workers, that strikes reach a running worker the moment
// they commit, and that a perpetual task's chain survives SIGKILL at every
// point of a run.
package reliability

import (
	"time"

	"github.com/shadows-go/shadows/worker"
)

// TaskName is the name the tests' plain task is registered and added under.
const TaskName = "reliability_job"

// Job is the arguments of the tests' plain task: its handler records the
// run in the ledger, sleeps SleepMS milliseconds and records the end of the
// run.
type Job struct {
	SleepMS int `json:"sleep_ms"`
}

// TaskName returns [TaskName].
func (Job) TaskName() string { return TaskName }

// LimitedTaskName is the name of the task with concurrency limits.
const LimitedTaskName = "reliability_limited"

// LimitedJob is a task limited to one run at a time per customer and three
// per region, across every worker (see [LimitedPolicy]). Its handler records
// the run with its customer and region, and sleeps SleepMS milliseconds.
type LimitedJob struct {
	CustomerID string `json:"customer_id"`
	Region     string `json:"region"`
	SleepMS    int    `json:"sleep_ms"`
}

// TaskName returns [LimitedTaskName].
func (LimitedJob) TaskName() string { return LimitedTaskName }

// The limits of [LimitedJob].
const (
	MaxPerCustomer = 1
	MaxPerRegion   = 3
)

// LimitedPolicy is the policy [LimitedJob] is registered with.
func LimitedPolicy() worker.Policy {
	return worker.Policy{Concurrency: []worker.ConcurrencyLimit{
		{Arg: "customer_id", Max: MaxPerCustomer},
		{Arg: "region", Max: MaxPerRegion},
	}}
}

// OrderTaskName is the name of the task the strike tests strike.
const OrderTaskName = "reliability_order"

// OrderJob is a task without a policy whose arguments strikes can match.
// Its handler records the run with its customer and sleeps SleepMS.
type OrderJob struct {
	CustomerID string `json:"customer_id"`
	Amount     int    `json:"amount"`
	SleepMS    int    `json:"sleep_ms"`
}

// TaskName returns [OrderTaskName].
func (OrderJob) TaskName() string { return OrderTaskName }

// PerpetualTaskName is the name of the perpetual task.
const PerpetualTaskName = "reliability_perpetual"

// PerpetualJob is a perpetual task (see [PerpetualPolicy]). Its handler
// records the run, with the time it was due, and sleeps SleepMS.
type PerpetualJob struct {
	SleepMS int `json:"sleep_ms"`
}

// TaskName returns [PerpetualTaskName].
func (PerpetualJob) TaskName() string { return PerpetualTaskName }

// PerpetualPolicy is the policy [PerpetualJob] is registered with: a new run
// every, measured from the start of the previous one. It is not automatic:
// the tests add the chain under a key of their choosing.
func PerpetualPolicy(every time.Duration) worker.Policy {
	return worker.Policy{Perpetual: &worker.Perpetual{Every: every}}
}

// LedgerDDL creates the ledger table if it does not exist. Each run of a
// task adds one row, identified by a random run_id, when its handler
// starts, and sets finished_at when the handler is done. Rows of
// different tests are told apart by queue. started_at and finished_at are
// read from the database server's clock, so the runs of every process are
// on one time line.
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
    task        text        NOT NULL DEFAULT '',
    due_at      timestamptz,
    customer    text        NOT NULL DEFAULT '',
    region      text        NOT NULL DEFAULT '',
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
	// $1 run_id, $2 queue, $3 key, $4 worker, $5 attempt, $6 redelivered,
	// $7 task, $8 due_at (the time the run was due), $9 customer,
	// $10 region.
	LedgerStart = `INSERT INTO public.reliability_ledger
    (run_id, queue, key, worker, attempt, redelivered, task, due_at, customer, region)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (run_id) DO NOTHING`
	// LedgerFinish records the end of run $1.
	LedgerFinish = `UPDATE public.reliability_ledger SET finished_at = clock_timestamp()
WHERE run_id = $1 AND finished_at IS NULL`
)
