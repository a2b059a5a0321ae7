package worker

import (
	"errors"
	"fmt"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/shadows-go/shadows/internal/argtag"
)

// Policy is how the worker runs a registered task: retries, a time limit,
// and whether it reschedules itself. The zero Policy runs a task once, with
// no time limit. At most one of Retry and ExponentialRetry, and at most one
// of Perpetual and Cron, may be set.
type Policy struct {
	// Retry runs a failed task again after a fixed delay.
	Retry Retry
	// ExponentialRetry runs a failed task again after a delay that doubles
	// with each attempt.
	ExponentialRetry ExponentialRetry
	// Timeout bounds each run: the handler's context is cancelled after it
	// and the run fails (retry and perpetual rules apply). Zero means no
	// limit. The handler can read and extend the time left (Task.Timeout).
	Timeout time.Duration
	// Perpetual makes the task reschedule itself after every run.
	Perpetual *Perpetual
	// Cron makes the task reschedule itself at the matches of a cron
	// expression.
	Cron *Cron
	// Concurrency limits how many such tasks run at once across every
	// worker; all limits must have a free slot before the task starts.
	Concurrency []ConcurrencyLimit
	// Cooldown drops runs that start within a window of the previous one.
	Cooldown []Cooldown
	// Debounce runs the task once, after submissions have settled.
	Debounce *Debounce
	// RateLimit caps runs per period; the excess waits or is dropped.
	RateLimit []RateLimit
}

// Admission control (Cooldown, Debounce, RateLimit) is checked by Postgres
// when a task is about to start, per argument value (Arg, a JSON key of the
// arguments) or, with Arg empty, for the task as a whole. Keys are shared as
// concurrency keys are: Scope separates otherwise equal ones. A dropped run
// ends cancelled, its record's error naming the rule; a delayed run is
// rescheduled under its key, costing no attempt. Neither counts as a
// failure.

// Cooldown drops a run that starts within Window of the start of the
// previous run of the same key.
type Cooldown struct {
	Arg    string
	Window time.Duration
	Scope  string
}

// Debounce runs a task once after its submissions settle: the first run to
// start becomes the winner and waits Settle; runs of other task keys that
// start meanwhile are dropped and push the settling on; the winner runs once
// Settle has passed since the last of them.
type Debounce struct {
	Arg    string
	Settle time.Duration
	Scope  string
}

// RateLimit lets at most Limit runs of a key start within any Per (a sliding
// window, at most a day). An excess run is rescheduled for when the oldest
// run leaves the window, or dropped when Drop is set. Failed runs count.
type RateLimit struct {
	Arg   string
	Limit int
	Per   time.Duration
	Drop  bool
	Scope string
}

// ConcurrencyLimit caps how many tasks run at once, per value of one
// argument (Arg, a JSON key of the arguments) or, with Arg empty, for the
// task as a whole. Postgres enforces it across every worker of the queue.
// A task that finds a limit full waits — it is not claimed again, costs no
// attempt, and starts first come, first served when a slot frees. Tasks of
// other keys never wait behind it.
//
// Limits are shared by key: two tasks limited on the same argument name
// and value share slots, as in docket; Scope separates otherwise equal keys.
// Slots are visible in the view shadows.concurrency, under keys written
// "[scope/]arg:value", or "[scope/]task:name" for a whole task. The form is
// plain text, not an escaping: an argument named task shares the keys of
// whole-task limits (its value "send" and the task named "send" both give
// "task:send"), and so can names holding ':' or '/'. Give such limits a
// Scope of their own when they must not share slots.
type ConcurrencyLimit struct {
	Arg   string
	Max   int
	Scope string
}

// RetryForever, as an Attempts value, retries without limit.
const RetryForever = -1

// Retry runs a failed task again, under the same key, after Delay. Attempts
// counts every run including the first, so Attempts: 3 means up to two
// retries; 0 and 1 mean none. While a retry waits, the key is live: adding
// it again reports "already scheduled".
type Retry struct {
	Attempts int
	Delay    time.Duration
}

// ExponentialRetry is Retry with a delay of MinDelay × 2^(attempt−1) after
// the attempt-th run fails, capped at MaxDelay. MinDelay defaults to 1s and
// MaxDelay to 64s.
type ExponentialRetry struct {
	Attempts int
	MinDelay time.Duration
	MaxDelay time.Duration
}

// Perpetual reschedules a task under its key after every run, whether it
// succeeded or failed (once its retries are used up), measuring Every from
// the start of the run: a run that took longer than Every is followed at
// once. The handler steers the next run through Task.Perpetual.
//
// With Automatic, every worker that can run the task seeds it under its task
// name (with zero-value arguments) when it starts, and again every
// ReseedInterval if its chain was broken; the key makes sure that however
// many workers do so, one copy lives.
type Perpetual struct {
	Every     time.Duration
	Automatic bool
}

// Cron reschedules a task at the matches of a cron expression: five fields
// (minute hour day-of-month month day-of-week) or a keyword such as @daily,
// @hourly or @every 10m, evaluated in Location (UTC when nil). Cron tasks are
// automatic — seeded under their task name for their next match — unless
// Manual is set.
type Cron struct {
	Expr     string
	Location *time.Location
	Manual   bool
}

// ReseedInterval is how often a worker re-seeds its automatic tasks.
const ReseedInterval = time.Minute

// compiledPolicy is a validated Policy with its derived parts.
type compiledPolicy struct {
	Policy
	attempts  int // 1 = no retry; RetryForever
	backoff   func(attempt int) time.Duration
	schedule  cron.Schedule
	location  *time.Location
	layout    *argtag.Layout // the arguments type's fields, for rule keys
	automatic bool
}

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

func (p Policy) compile() (*compiledPolicy, error) {
	c := &compiledPolicy{Policy: p, attempts: 1, backoff: func(int) time.Duration { return 0 }}
	for _, l := range p.Concurrency {
		if l.Max < 1 {
			return nil, fmt.Errorf("concurrency limit on %q: maximum %d is below 1", l.Arg, l.Max)
		}
	}
	for _, cd := range p.Cooldown {
		if cd.Window <= 0 {
			return nil, fmt.Errorf("cooldown on %q: window %v is not positive", cd.Arg, cd.Window)
		}
	}
	if d := p.Debounce; d != nil && d.Settle <= 0 {
		return nil, fmt.Errorf("debounce on %q: settle time %v is not positive", d.Arg, d.Settle)
	}
	for _, rl := range p.RateLimit {
		if rl.Limit < 1 {
			return nil, fmt.Errorf("rate limit on %q: limit %d is below 1", rl.Arg, rl.Limit)
		}
		if rl.Per <= 0 || rl.Per > 24*time.Hour {
			return nil, fmt.Errorf("rate limit on %q: period %v is not between 0 and 24h", rl.Arg, rl.Per)
		}
	}
	if p.Timeout < 0 {
		return nil, fmt.Errorf("timeout %v is negative", p.Timeout)
	}
	fixed, exp := p.Retry != (Retry{}), p.ExponentialRetry != (ExponentialRetry{})
	switch {
	case fixed && exp:
		return nil, errors.New("only one retry policy is allowed, but both Retry and ExponentialRetry are set")
	case fixed:
		r := p.Retry
		if r.Attempts < RetryForever || r.Delay < 0 {
			return nil, fmt.Errorf("retry attempts %d or delay %v is negative", r.Attempts, r.Delay)
		}
		c.attempts = max(r.Attempts, 1)
		if r.Attempts == RetryForever {
			c.attempts = RetryForever
		}
		c.backoff = func(int) time.Duration { return r.Delay }
	case exp:
		r := p.ExponentialRetry
		if r.Attempts < RetryForever || r.MinDelay < 0 || r.MaxDelay < 0 {
			return nil, fmt.Errorf("exponential retry attempts %d or delays %v, %v are negative", r.Attempts, r.MinDelay, r.MaxDelay)
		}
		if r.MinDelay == 0 {
			r.MinDelay = time.Second
		}
		if r.MaxDelay == 0 {
			r.MaxDelay = 64 * time.Second
		}
		if r.MaxDelay < r.MinDelay {
			return nil, fmt.Errorf("exponential retry maximum delay %v is below its minimum %v", r.MaxDelay, r.MinDelay)
		}
		c.attempts = max(r.Attempts, 1)
		if r.Attempts == RetryForever {
			c.attempts = RetryForever
		}
		c.backoff = func(attempt int) time.Duration {
			d := r.MinDelay
			for i := 1; i < attempt && d < r.MaxDelay; i++ {
				d *= 2
			}
			return min(d, r.MaxDelay)
		}
	}
	switch {
	case p.Perpetual != nil && p.Cron != nil:
		return nil, errors.New("only one perpetual policy is allowed, but both Perpetual and Cron are set")
	case p.Perpetual != nil:
		if p.Perpetual.Every < 0 {
			return nil, fmt.Errorf("perpetual interval %v is negative", p.Perpetual.Every)
		}
		c.automatic = p.Perpetual.Automatic
	case p.Cron != nil:
		s, err := cronParser.Parse(p.Cron.Expr)
		if err != nil {
			return nil, fmt.Errorf("cron expression %q: %w", p.Cron.Expr, err)
		}
		c.schedule = s
		c.location = p.Cron.Location
		if c.location == nil {
			c.location = time.UTC
		}
		c.automatic = !p.Cron.Manual
	}
	return c, nil
}

func (c *compiledPolicy) perpetual() bool { return c.Perpetual != nil || c.Cron != nil }

// admitted reports whether the policy has admission rules to check.
func (c *compiledPolicy) admitted() bool {
	return len(c.Cooldown) > 0 || c.Debounce != nil || len(c.RateLimit) > 0
}

// retryAllowed reports whether a run that was attempt number attempt may be
// followed by another.
func (c *compiledPolicy) retryAllowed(attempt int) bool {
	return c.attempts == RetryForever || attempt < c.attempts
}

// nextCron is the first match of the cron schedule after t, in the
// policy's location. A schedule that names its hours ("30 2 * * *", @daily)
// runs at those wall-clock times once a day across daylight-saving
// changes, as Debian's cron and docket's cronsim do: a time the clocks skip
// runs when they jump (the library alone skipped that day), and a time
// they repeat runs once (the library ran it twice). A schedule over every
// hour, and @every, follow real time.
func (c *compiledPolicy) nextCron(t time.Time) time.Time {
	t = t.In(c.location)
	spec, ok := c.schedule.(*cron.SpecSchedule)
	if !ok || spec.Hour&cronStar != 0 || spec.Location != time.Local {
		return c.schedule.Next(t)
	}
	// Match on the wall clock, read as UTC (which has no changes), and
	// turn each match back into an instant of the location.
	wall := time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC)
	for range 1000 { // a match is at most a few years away; this bounds a schedule that never matches
		wall = c.schedule.Next(wall)
		if wall.IsZero() {
			return wall
		}
		next := time.Date(wall.Year(), wall.Month(), wall.Day(), wall.Hour(), wall.Minute(), 0, 0, c.location)
		if next.Hour() != wall.Hour() || next.Minute() != wall.Minute() {
			// The clocks skip this time: run when they jump.
			_, next = next.ZoneBounds()
		}
		if next.After(t) {
			return next
		}
	}
	return time.Time{}
}

// cronStar is the bit robfig/cron sets in a field written as "*".
const cronStar = 1 << 63

// RetryRequest is the error a handler returns to ask for another attempt at
// a given time; make one with RetryAfter or RetryAt. It counts against the
// policy's attempts: with none left, the task fails with Err.
type RetryRequest struct {
	// At is when to retry; zero means after Delay.
	At    time.Time
	Delay time.Duration
	// Err describes why; it becomes the record's error.
	Err error
}

func (r *RetryRequest) Error() string {
	msg := "retry requested"
	if r.Err != nil {
		msg = r.Err.Error()
	}
	return msg
}

func (r *RetryRequest) Unwrap() error { return r.Err }

// when resolves the requested retry time against now.
func (r *RetryRequest) when(now time.Time) time.Time {
	if !r.At.IsZero() {
		return r.At
	}
	return now.Add(r.Delay)
}

// RetryAfter returns an error that, returned by a handler, retries the task
// after d (counted against its attempts). reason may be nil.
func RetryAfter(d time.Duration, reason error) error {
	return &RetryRequest{Delay: d, Err: reason}
}

// RetryAt returns an error that, returned by a handler, retries the task at
// t (a time in the past means now), counted against its attempts.
func RetryAt(t time.Time, reason error) error {
	return &RetryRequest{At: t, Err: reason}
}
