// Package cli is the shadows command: a worker, and the commands that
// inspect and feed a queue (snapshot, watch, clear, strike, restore,
// strikes, tasks, workers, migrate, version), built with cobra.
//
// The shadows command (cmd/shadows) runs only the built-in tasks trace,
// fail and sleep, since a Go program cannot load task code by name at run
// time. A program offers the same commands with its own tasks by handing
// its registry to [Main]:
//
//	func main() {
//		reg := worker.NewRegistry()
//		worker.MustRegister(reg, sendEmail, worker.Policy{})
//		os.Exit(cli.Main(cli.Config{Name: "myapp", Registry: reg}))
//	}
//
// Then "myapp worker --url $DATABASE_URL --queue emails" runs its tasks and
// "myapp snapshot" shows the queue. [New] returns the command tree itself,
// for a program that has a cobra command tree of its own.
//
// Every command takes --url (or $DATABASE_URL) and --queue (or
// $SHADOWS_QUEUE). Each flag of the worker command has an environment
// variable too, named in its help. Errors print as one line on standard
// error, and the exit status is 0 on success, 1 on failure, 2 for bad
// flags or arguments and 130 when interrupted; SIGINT and SIGTERM make
// the worker drain its running tasks and exit 0.
//
// The worker serves Prometheus metrics with --metrics-port and a health
// check with --healthcheck-port, both on every interface (":PORT"). Its
// metrics then go to a meter provider of its own, in place of
// Config.Worker.Queue.MeterProvider. When OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, every command sends its spans
// there with OTLP over HTTP, in place of Config.Worker.Queue.TracerProvider;
// the other standard OTEL_* variables (headers, service name, resource
// attributes, sampler) apply.
package cli
