// Package cli is the shadows command: a worker, and the commands that
// inspect and feed a queue (snapshot, watch, clear, tasks, workers,
// migrate, version), built with cobra.
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
package cli
