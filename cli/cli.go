package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/shadows-go/shadows/migrations"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// Config configures the command that [New] and [Main] build. The zero value
// is the shadows command itself.
type Config struct {
	// Registry holds the tasks that the worker command runs. Defaults to
	// worker.NewRegistry(), which holds only the built-in tasks trace, fail
	// and sleep.
	Registry *worker.Registry

	// Name is the command's name, as help and messages show it. Defaults to
	// "shadows".
	Name string

	// Version is the program's own version, which the version command
	// prints before the version of shadows. Empty prints the version of
	// shadows alone.
	Version string

	// Worker is where the worker command's settings start from, for the
	// settings that have no flag (Middleware, Fallback, ReseedInterval, and
	// the Queue's ExecutionTTL, HeartbeatInterval and MissedHeartbeats,
	// which the other commands use too). Its values, or the worker
	// package's defaults where they are zero, are the defaults of the
	// flags, which override them. Logger and Queue.Logger are replaced by
	// the logger that --log-level and --log-format describe.
	Worker worker.Config
}

// Exit statuses of Main.
const (
	exitFailure     = 1   // the command failed
	exitUsage       = 2   // bad flags or arguments
	exitInterrupted = 130 // stopped by SIGINT or SIGTERM before it was done
)

// Version is the version of shadows that the version command prints.
// Release builds may set it:
//
//	go build -ldflags "-X github.com/shadows-go/shadows/cli.Version=v1.2.3" ./cmd/shadows
//
// When it is empty the version comes from the build information: the
// module version for a binary built by "go install …@version", else
// "devel".
var Version string

const modulePath = "github.com/shadows-go/shadows"

// shadowsVersion returns Version or, when it is empty, the version of the
// shadows module that the binary was built from.
func shadowsVersion() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	v := ""
	if bi.Main.Path == modulePath {
		v = bi.Main.Version
	} else {
		for _, d := range bi.Deps {
			if d.Path == modulePath {
				v = d.Version
				if d.Replace != nil && d.Replace.Version != "" {
					v = d.Replace.Version
				}
			}
		}
	}
	if v == "" || v == "(devel)" {
		return "devel"
	}
	return v
}

// app is the state the commands share: the config and the global flags.
type app struct {
	cfg   Config
	url   string
	queue string
	tp    *sdktrace.TracerProvider // made by the first queueConfig when OTLP is configured
}

// usageError marks bad flags or arguments: Main prints it with a pointer
// to the command's help and exits 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// New returns the root command with all its subcommands, configured by cfg.
// Run it with Main, or with its Execute methods (it then returns errors
// without printing them) to embed it in a larger command tree.
func New(cfg Config) *cobra.Command {
	if cfg.Name == "" {
		cfg.Name = "shadows"
	}
	if cfg.Registry == nil {
		cfg.Registry = worker.NewRegistry()
	}
	a := &app{cfg: cfg}
	root := &cobra.Command{
		Use:   cfg.Name,
		Short: "Run and inspect task queues that live in PostgreSQL",
		Long: cfg.Name + ` runs shadows workers and inspects and feeds their queues.

Every command takes --url, the PostgreSQL connection string
(postgres://user:password@host:5432/database), and --queue, the queue's name.
Flags also read the environment variables their help names. An empty --url
falls back on the PG* environment variables and libpq's defaults.

Durations take Go's syntax (90s, 1m30s, 250ms), a number of seconds (90) or
mm:ss and hh:mm:ss.`,
		Version: versionLine(cfg),
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd); err != nil {
				return &usageError{err}
			}
			return nil
		},
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })

	queueDefault := cfg.Worker.Queue.Name
	if queueDefault == "" {
		queueDefault = queue.DefaultName
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.url, "url", "", "PostgreSQL connection string")
	withEnv(pf, "url", "DATABASE_URL")
	pf.StringVar(&a.queue, "queue", queueDefault, "name of the queue")
	withEnv(pf, "queue", "SHADOWS_QUEUE")

	root.AddCommand(
		a.workerCommand(),
		a.snapshotCommand(),
		a.watchCommand(),
		a.clearCommand(),
		a.strikeCommand(),
		a.restoreCommand(),
		a.strikesCommand(),
		a.tasksCommand(),
		a.workersCommand(),
		a.migrateCommand(),
		a.versionCommand(),
	)
	// Errors are returned, never printed by cobra: Main prints them as one
	// line, and a program embedding the command decides for itself.
	var quiet func(*cobra.Command)
	quiet = func(c *cobra.Command) {
		c.SilenceErrors, c.SilenceUsage = true, true
		for _, sub := range c.Commands() {
			quiet(sub)
		}
	}
	quiet(root)
	// Spans made by a command are sent before it returns.
	var flushing func(*cobra.Command)
	flushing = func(c *cobra.Command) {
		if run := c.RunE; run != nil {
			c.RunE = func(cmd *cobra.Command, argv []string) error {
				defer a.flushTracing(cmd.ErrOrStderr())
				return run(cmd, argv)
			}
		}
		for _, sub := range c.Commands() {
			flushing(sub)
		}
	}
	flushing(root)
	return root
}

// Main runs the command that cfg describes with the program's arguments
// and returns the exit status: 0 on success, 1 when the command failed, 2
// for bad flags or arguments, 130 when interrupted. Errors are printed on
// standard error as one line. SIGINT and SIGTERM cancel the command's
// context; the worker command then drains its running tasks and exits 0.
// A second signal ends the process at once.
//
//	func main() { os.Exit(cli.Main(cli.Config{Registry: reg})) }
func Main(cfg Config) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // the next signal has its default effect
	return run(ctx, New(cfg), os.Args[1:], os.Stderr)
}

// run executes root with args and turns its error into an exit status.
func run(ctx context.Context, root *cobra.Command, args []string, stderr io.Writer) int {
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	if cmd == nil {
		cmd = root
	}
	msg := oneLine(err.Error())
	switch {
	case isUsage(err):
		fmt.Fprintf(stderr, "%s: %s\nRun '%s --help' for usage.\n", root.Name(), msg, cmd.CommandPath())
		return exitUsage
	case ctx.Err() != nil:
		fmt.Fprintf(stderr, "%s: interrupted\n", root.Name())
		return exitInterrupted
	default:
		fmt.Fprintf(stderr, "%s: %s\n", root.Name(), msg)
		return exitFailure
	}
}

// isUsage reports whether err is about the command line rather than what
// the command did. Cobra returns some such errors unwrapped.
func isUsage(err error) bool {
	if _, ok := errors.AsType[*usageError](err); ok {
		return true
	}
	msg := err.Error()
	for _, prefix := range []string{"unknown command ", "required flag(s) ", "if any flags in the group ", "at least one of the flags in the group "} {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}

// groupCommand returns a command that only holds subcommands: alone it
// prints its help, with an unknown subcommand it fails.
func groupCommand(use, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{
		Use:                        use,
		Short:                      short,
		Args:                       cobra.ArbitraryArgs,
		SuggestionsMinimumDistance: 2,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf(" (did you mean %q?)", s[0])
			}
			return &usageError{errors.New(msg)}
		},
	}
	c.AddCommand(subs...)
	return c
}

// args wraps a cobra argument check so that its errors count as usage
// errors.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return &usageError{err}
		}
		return nil
	}
}

// connectTimeout bounds connecting when the URL sets no connect_timeout.
const connectTimeout = 10 * time.Second

// connect opens a pool on --url, named for purpose in pg_stat_activity,
// with at least minConns connections allowed, and checks that the server
// answers.
func (a *app) connect(ctx context.Context, purpose string, minConns int) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(a.url)
	if err != nil {
		return nil, usagef("invalid --url: %w", err)
	}
	if pcfg.ConnConfig.ConnectTimeout == 0 {
		pcfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	if _, ok := pcfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		pcfg.ConnConfig.RuntimeParams["application_name"] = a.cfg.Name + " " + purpose
	}
	if !strings.Contains(a.url, "pool_max_conns") && pcfg.MaxConns < int32(minConns) {
		pcfg.MaxConns = int32(minConns)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to the database: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("cannot connect to the database: %w", err)
	}
	return pool, nil
}

// queueConfig is the configuration of the queue that --queue names, with
// logger, and with the OTLP tracer provider when the environment asks for
// one (whose warnings go to otelLogger, or to standard error when it is
// nil). It checks the configuration, so that a bad --queue fails before
// connecting.
func (a *app) queueConfig(cmd *cobra.Command, logger, otelLogger *slog.Logger) (queue.Config, error) {
	qc := a.cfg.Worker.Queue
	qc.Name = a.queue
	qc.Logger = logger
	if a.queue == "" {
		// queue.Config reads an empty name as the default queue: a script
		// passing an unset variable would act on it.
		return qc, usagef("--queue is empty")
	}
	if err := qc.Validate(); err != nil {
		return qc, usagef("--queue %q: %w", clean(a.queue), err)
	}
	tp, err := a.tracing(cmd.Context(), cmd.ErrOrStderr(), otelLogger)
	if err != nil {
		return qc, &usageError{err}
	}
	if tp != nil {
		qc.TracerProvider = tp
	}
	return qc, nil
}

// openQueue checks --queue, connects, checks that the database is migrated
// and returns the queue that --queue names. Close its pool when done.
func (a *app) openQueue(cmd *cobra.Command, purpose string) (*queue.Queue, error) {
	ctx := cmd.Context()
	// The queue warns of what the commands report themselves, such as a
	// struck add: only its errors are logged.
	qc, err := a.queueConfig(cmd, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelError})), nil)
	if err != nil {
		return nil, err
	}
	pool, err := a.connect(ctx, purpose, 0)
	if err != nil {
		return nil, err
	}
	q, err := queue.New(pool, qc)
	if err != nil {
		pool.Close()
		return nil, usagef("--queue %q: %w", clean(a.queue), err)
	}
	if err := a.checkSchema(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return q, nil
}

// checkSchema fails, telling how to fix it, unless every migration this
// program carries has been applied. It writes nothing and takes no lock.
func (a *app) checkSchema(ctx context.Context, pool *pgxpool.Pool) error {
	err := migrations.Check(ctx, pool)
	if errors.Is(err, migrations.ErrNotMigrated) {
		return fmt.Errorf("%w: run %q first", err, a.cfg.Name+" migrate up")
	}
	return err
}
