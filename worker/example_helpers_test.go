package worker_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// Helpers shared by the examples of this package. None of them is part of
// the API: they keep the examples short and their output the same on every
// run.

// stdoutLogger writes log lines to standard output as slog's text handler
// does, without the attributes that change from run to run: the time, the
// queue's random name, durations and lateness.
func stdoutLogger() *slog.Logger {
	varying := map[string]bool{slog.TimeKey: true, "queue": true, "duration": true, "lateness": true, "redelivered": true}
	return slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && varying[a.Key] {
				return slog.Attr{}
			}
			return a
		},
	}))
}

// discard is a logger for examples whose output is not about logs.
var discard = slog.New(slog.DiscardHandler)

// runInBackground works q with the tasks of reg until nothing is left to
// run, in the background. The returned function waits for it to finish.
func runInBackground(ctx context.Context, pool *pgxpool.Pool, reg *worker.Registry, q *queue.Queue) (wait func()) {
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Concurrency: 10, Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.RunUntilFinished(ctx) }()
	return func() {
		if err := <-done; err != nil {
			log.Fatal(err)
		}
	}
}

// gate holds the handlers of the concurrency examples while they run, so
// that the examples can look at the slots their tasks hold.
type gate struct {
	started chan string
	opened  chan struct{}
}

func newGate() *gate {
	return &gate{started: make(chan string, 100), opened: make(chan struct{})}
}

// enter reports that the task with key started, and waits for the gate to
// open.
func (g *gate) enter(ctx context.Context, key string) error {
	g.started <- key
	select {
	case <-g.opened:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// await waits until n tasks have entered.
func (g *gate) await(ctx context.Context, n int) {
	for range n {
		select {
		case <-g.started:
		case <-ctx.Done():
			log.Fatal(ctx.Err())
		}
	}
}

// open lets every task held at the gate, and every later one, go on.
func (g *gate) open() { close(g.opened) }

// waitUntil polls cond until it holds.
func waitUntil(ctx context.Context, cond func() bool) {
	for !cond() {
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			log.Fatal(ctx.Err())
		}
	}
}

// waitForWaiting waits until n tasks of q wait for a concurrency slot.
func waitForWaiting(ctx context.Context, q *queue.Queue, n int) {
	waitUntil(ctx, func() bool {
		s, err := q.Snapshot(ctx)
		return err == nil && s.Waiting == n
	})
}

// printSlots prints, from the view shadows.concurrency, how many tasks of
// the queue hold a slot of each limit key, and how many wait for one.
func printSlots(ctx context.Context, pool *pgxpool.Pool, q *queue.Queue) {
	rows, err := pool.Query(ctx, `
		SELECT limit_key, running, max_slots
		FROM shadows.concurrency
		WHERE queue = $1
		ORDER BY limit_key`, q.Name())
	if err != nil {
		log.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			key          string
			running, max int
		)
		if err := rows.Scan(&key, &running, &max); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d running, at most %d\n", key, running, max)
	}
	if err := rows.Err(); err != nil {
		log.Fatal(err)
	}
	s, err := q.Snapshot(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d waiting for a slot\n", s.Waiting)
}

// printRecord prints a task's key and state, and its error if it has one.
func printRecord(ctx context.Context, q *queue.Queue, key string) {
	ex, err := q.Execution(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	if ex.Error == "" {
		fmt.Println(ex.Key, ex.State)
		return
	}
	fmt.Printf("%s %s: %s\n", ex.Key, ex.State, ex.Error)
}
