package pgtest

import (
	"context"
	"fmt"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"go.uber.org/goleak"
)

// dockerImage is the PostgreSQL image that Docker runs for the tests.
const dockerImage = "postgres:17-alpine"

// startContainer starts a PostgreSQL container, configured like a pgcluster
// throwaway cluster, and returns the URL of its postgres database and a
// function that removes it.
func startContainer(ctx context.Context) (string, func() error, error) {
	ctr, err := tcpostgres.Run(ctx, dockerImage,
		testcontainers.WithCmd("postgres",
			"-c", "fsync=off",
			"-c", "synchronous_commit=off",
			"-c", "full_page_writes=off",
			"-c", "max_connections=200"),
		tcpostgres.BasicWaitStrategies(),
	)
	stop := func() error {
		if err := testcontainers.TerminateContainer(ctr, testcontainers.StopTimeout(10*time.Second)); err != nil {
			return fmt.Errorf("remove the PostgreSQL container: %w", err)
		}
		return nil
	}
	if err != nil {
		if ctr != nil {
			_ = stop()
		}
		return "", nil, fmt.Errorf("start %s: %w", dockerImage, err)
	}
	u, err := ctr.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = stop()
		return "", nil, fmt.Errorf("address of the PostgreSQL container: %w", err)
	}
	return u, stop, nil
}

// dockerLeakOptions ignores the goroutines that testcontainers keeps on
// purpose until the process exits: the connection to its reaper container
// (Ryuk, which removes the containers should the process die) and the idle
// HTTP connections of its Docker client.
func dockerLeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/testcontainers/testcontainers-go.(*Reaper).connect.func1"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
	}
}
