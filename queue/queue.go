package queue

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/shadows-go/shadows/db"
	"github.com/shadows-go/shadows/internal/telemetry"
)

// Defaults applied by [New] to a zero [Config].
const (
	DefaultName              = "shadows"
	DefaultExecutionTTL      = 15 * time.Minute
	DefaultHeartbeatInterval = 2 * time.Second
	DefaultMissedHeartbeats  = 5
)

// NoExecutionTTL, as [Config.ExecutionTTL], deletes a task's record the moment
// it ends: nothing is kept, so [Queue.Execution] and [Queue.Wait] cannot see
// how it ended ("fire and forget").
const NoExecutionTTL time.Duration = -1

// Limits on names, enforced by [New] and by every call that takes a key.
const (
	MaxNameLength = 200
	MaxKeyLength  = 1000
)

// Errors returned by this package. Test for them with [errors.Is].
var (
	// ErrInvalidConfig is returned by New for a config it cannot use.
	ErrInvalidConfig = errors.New("invalid queue config")
	// ErrInvalidArgs is returned when task arguments cannot be stored.
	ErrInvalidArgs = errors.New("invalid task arguments")
	// ErrInvalidKey is returned for an empty, oversized or malformed key.
	ErrInvalidKey = errors.New("invalid task key")
	// ErrNotFound is returned when no record exists for a key.
	ErrNotFound = errors.New("task not found")
	// ErrCancelled is returned by Wait for a task that was cancelled.
	ErrCancelled = errors.New("task cancelled")
)

// Args are a task's arguments. The type names its task, and its JSON form
// (an object) is what is stored: the JSON keys are the parameter names that
// logs, strikes and concurrency limits refer to.
//
//	type SendEmail struct {
//		To      string `json:"to"`
//		Subject string `json:"subject"`
//	}
//
//	func (SendEmail) TaskName() string { return "send_email" }
type Args interface {
	TaskName() string
}

// Config configures a [Queue]. The zero value is usable: it names the queue
// [DefaultName] and keeps records for [DefaultExecutionTTL].
type Config struct {
	// Name separates this queue from others sharing the same tables. Tasks,
	// workers and events of one queue are invisible to every other.
	// Defaults to "shadows". At most 200 bytes of valid UTF-8, no control
	// characters.
	Name string

	// ExecutionTTL is how long a task's record (state, error, result) is kept
	// after it ends. Defaults to 15 minutes; NoExecutionTTL deletes records
	// at once. Workers use the value of the queue they serve.
	ExecutionTTL time.Duration

	// HeartbeatInterval is how often workers announce themselves. Defaults
	// to 2 seconds.
	HeartbeatInterval time.Duration

	// MissedHeartbeats is how many heartbeats a worker may miss before
	// Workers stops listing it. Defaults to 5.
	MissedHeartbeats int

	// Logger receives warnings. Defaults to slog.Default().
	Logger *slog.Logger

	// TracerProvider and MeterProvider receive shadows' spans and metrics
	// (see the README's Observability section). They default to the
	// OpenTelemetry globals.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
}

// Validate reports whether New would accept c, without needing a pool.
func (c Config) Validate() error {
	_, err := c.withDefaults()
	return err
}

// ValidName reports whether s may name a queue, task or worker: at most 200
// bytes of valid UTF-8 without control characters.
func ValidName(s string) error {
	return validateName(s)
}

// withDefaults validates c and fills in its defaults.
func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if err := validateName(c.Name); err != nil {
		return c, fmt.Errorf("%w: name: %w", ErrInvalidConfig, err)
	}
	switch {
	case c.ExecutionTTL == 0:
		c.ExecutionTTL = DefaultExecutionTTL
	case c.ExecutionTTL < 0 && c.ExecutionTTL != NoExecutionTTL:
		return c, fmt.Errorf("%w: execution TTL %v is negative (use NoExecutionTTL to keep no records)", ErrInvalidConfig, c.ExecutionTTL)
	}
	switch {
	case c.HeartbeatInterval == 0:
		c.HeartbeatInterval = DefaultHeartbeatInterval
	case c.HeartbeatInterval < 0:
		return c, fmt.Errorf("%w: heartbeat interval %v is negative", ErrInvalidConfig, c.HeartbeatInterval)
	}
	switch {
	case c.MissedHeartbeats == 0:
		c.MissedHeartbeats = DefaultMissedHeartbeats
	case c.MissedHeartbeats < 0:
		return c, fmt.Errorf("%w: missed heartbeats %d is negative", ErrInvalidConfig, c.MissedHeartbeats)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

func validateName(s string) error {
	if len(s) > MaxNameLength {
		return fmt.Errorf("%d bytes is longer than %d", len(s), MaxNameLength)
	}
	return validateText(s)
}

func validateText(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return errors.New("contains a control character")
	}
	return nil
}

func validateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	if len(key) > MaxKeyLength {
		return fmt.Errorf("%w: %d bytes is longer than %d", ErrInvalidKey, len(key), MaxKeyLength)
	}
	if err := validateText(key); err != nil {
		return fmt.Errorf("%w: %q %w", ErrInvalidKey, key, err)
	}
	return nil
}

// Queue adds tasks to one named queue and reads its state. It is safe for
// concurrent use; create one per queue name and share it.
type Queue struct {
	pool    *pgxpool.Pool
	cfg     Config
	queries *db.Queries
	tel     *telemetry.Telemetry
}

// New returns a Queue on pool. It does not touch the database; the schema
// must have been applied with migrations.Up.
func New(pool *pgxpool.Pool, cfg Config) (*Queue, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: nil pool", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	tel := telemetry.New(cfg.Name, cfg.TracerProvider, cfg.MeterProvider)
	return &Queue{pool: pool, cfg: cfg, queries: db.New(), tel: tel}, nil
}

// Name returns the queue's name.
func (q *Queue) Name() string { return q.cfg.Name }

// Config returns the queue's configuration with its defaults filled in.
func (q *Queue) Config() Config { return q.cfg }

// Pool returns the connection pool the queue uses.
func (q *Queue) Pool() *pgxpool.Pool { return q.pool }

// ttlSeconds is the record lifetime as the SQL queries take it; zero or less
// deletes at the end.
func (q *Queue) ttlSeconds() float64 {
	if q.cfg.ExecutionTTL < 0 {
		return 0
	}
	return q.cfg.ExecutionTTL.Seconds()
}

// dbtx is what both a pool and a transaction offer to the generated queries.
type dbtx = db.DBTX

var _ dbtx = pgx.Tx(nil)
