// Command shadows runs and inspects shadows task queues in PostgreSQL: a
// worker running the built-in tasks trace, fail and sleep, and the
// commands snapshot, watch, clear, strike, restore, strikes, tasks,
// workers, migrate and version.
// "shadows --help" lists them; "shadows help COMMAND" describes one.
//
//	go install github.com/shadows-go/shadows/cmd/shadows@latest
//	shadows migrate up --url postgres://localhost/app
//	shadows worker --url postgres://localhost/app --queue emails --metrics-port 9090
//	shadows strike --url postgres://localhost/app --queue emails send_email to == bob@example.com
//
// To run tasks of your own, build a command like this one with your own
// registry: see package github.com/shadows-go/shadows/cli.
package main

import (
	"os"

	"github.com/shadows-go/shadows/cli"
	"github.com/shadows-go/shadows/worker"
)

func main() {
	os.Exit(cli.Main(cli.Config{Registry: worker.NewRegistry()}))
}
