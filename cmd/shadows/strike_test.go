package main_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/strike"
)

func TestStrikeRestoreStrikes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	require.Equal(t, fmt.Sprintf("No strikes on queue %q\n", e.queue), e.ok("strikes").stdout)

	for _, c := range []struct {
		args []string
		out  string
	}{
		{[]string{"strike", "process_order", "amount", ">", "int:1000"}, "struck: process_order amount > 1000\n"},
		{[]string{"strike", "process_order", "amount", "gt", "float:1000"}, "already struck: process_order amount > 1000\n"},
		{[]string{"strike", "*", "customer_id", "==", "12345"}, "struck: * customer_id == \"12345\"\n"},
		{[]string{"strike", "", "price", "between", "float:1.5", "int:5", "and", "vip", "==", "bool:TRUE"}, "struck: * price between [1.5,5] and vip == true\n"},
		{[]string{"strike", "trace", "message", "==", "blocked"}, "struck: trace message == \"blocked\"\n"},
		{[]string{"strike", "--hold", "sleep"}, "struck: hold sleep\n"},
		{[]string{"strike", "sleep", "*"}, "struck: sleep\n"},
	} {
		r := e.ok(c.args...)
		require.Equal(t, c.out, r.stdout, c.args)
		require.Empty(t, r.stderr)
	}

	r := e.ok("strikes")
	require.Regexp(t, `^STRUCK\s+RULE
(\S+ ago|just now)\s+process_order amount > 1000
(\S+ ago|just now)\s+\* customer_id == "12345"
(\S+ ago|just now)\s+\* price between \[1\.5,5\] and vip == true
(\S+ ago|just now)\s+trace message == "blocked"
(\S+ ago|just now)\s+hold sleep
(\S+ ago|just now)\s+sleep
$`, r.stdout)
	active, err := e.q.Strikes(context.Background())
	require.NoError(t, err)
	require.Len(t, active, 6)
	require.Equal(t, strike.Rule{Task: "process_order", Param: "amount", Op: strike.Gt, Value: int64(1000)}, active[0].Rule)

	// A struck add stores nothing and says which rule kept it out.
	r = e.run("tasks", "trace", "blocked", "--key", "kept-out")
	require.Equal(t, 1, r.code)
	require.Empty(t, r.stdout)
	require.Equal(t, fmt.Sprintf("shadows: trace task \"kept-out\" was not added to queue %q: struck by trace message == \"blocked\"\n", e.queue), r.stderr)
	_, err = e.q.Execution(context.Background(), "kept-out")
	require.ErrorIs(t, err, queue.ErrNotFound)

	// A hold is restored with --hold only, and a restore without it says so.
	require.Equal(t, "restored: sleep\n", e.ok("restore", "sleep").stdout)
	require.Equal(t, "nothing to restore: sleep (hold sleep is struck: restore it with --hold)\n", e.ok("restore", "sleep").stdout)
	require.Equal(t, "restored: hold sleep\n", e.ok("restore", "--hold", "sleep").stdout)

	// Restore takes the same arguments, or the text form.
	require.Equal(t, "restored: process_order amount > 1000\n", e.ok("restore", "process_order", "amount", ">", "int:1000").stdout)
	require.Equal(t, "nothing to restore: process_order amount > 1000\n", e.ok("restore", "--rule", "process_order amount > 1000").stdout)
	require.Equal(t, "restored: * price between [1.5,5] and vip == true\n", e.ok("restore", "--rule", "* price between [1.5, 5] and vip == true").stdout)
	require.Equal(t, "restored: trace message == \"blocked\"\n", e.ok("restore", "trace", "message", "eq", "blocked").stdout)
	require.Contains(t, e.ok("tasks", "trace", "blocked", "--key", "let-in").stdout, "Added trace task \"let-in\"")

	r = e.ok("strikes")
	require.Regexp(t, `^STRUCK\s+RULE\n(\S+ ago|just now)\s+\* customer_id == "12345"\n$`, r.stdout)
}
