package cli_test

import (
	"context"
	"os"

	"github.com/shadows-go/shadows/cli"
	"github.com/shadows-go/shadows/worker"
)

type SendEmail struct {
	To string `json:"to"`
}

func (SendEmail) TaskName() string { return "send_email" }

func sendEmail(ctx context.Context, t *worker.Task[SendEmail]) error {
	t.Logger.Info("sending", "to", t.Args.To)
	return nil
}

// A program's own command: "myapp worker" runs send_email besides the
// built-in tasks, and "myapp snapshot", "myapp watch KEY" and the others
// work as the shadows command's do.
func Example() {
	reg := worker.NewRegistry()
	worker.MustRegister(reg, sendEmail, worker.Policy{})
	os.Exit(cli.Main(cli.Config{Name: "myapp", Version: "1.4.0", Registry: reg}))
}
