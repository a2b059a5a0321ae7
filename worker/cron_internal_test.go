package worker

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Across daylight-saving changes, a schedule naming its hours runs once a
// day at its wall-clock time, as Debian's cron and docket's cronsim do; one
// over every hour follows real time.
func TestCronAcrossDaylightSaving(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	require.NoError(t, err)
	runs := func(expr string, from time.Time, n int) []string {
		p, err := Policy{Cron: &Cron{Expr: expr, Location: ny}}.compile()
		require.NoError(t, err)
		var out []string
		at := from
		for range n {
			at = p.nextCron(at)
			out = append(out, at.UTC().Format("01-02 15:04Z"))
		}
		return out
	}
	// Fall back on 2026-11-01: 01:30 happens twice (05:30Z EDT, 06:30Z EST).
	require.Equal(t, []string{"10-31 05:30Z", "11-01 05:30Z", "11-02 06:30Z"},
		runs("30 1 * * *", time.Date(2026, 10, 30, 12, 0, 0, 0, ny), 3), "the repeated time runs once")
	// Spring forward on 2026-03-08: 02:00-03:00 does not exist.
	require.Equal(t, []string{"03-07 07:30Z", "03-08 07:00Z", "03-09 06:30Z"},
		runs("30 2 * * *", time.Date(2026, 3, 6, 12, 0, 0, 0, ny), 3), "the skipped time runs at the jump")
	// Every hour: real time, both 01:30s on the fall-back day.
	require.Equal(t, []string{"11-01 04:30Z", "11-01 05:30Z", "11-01 06:30Z", "11-01 07:30Z"},
		runs("30 * * * *", time.Date(2026, 11, 1, 0, 0, 0, 0, ny), 4))
	// Unchanged away from a change, and in UTC.
	require.Equal(t, []string{"12-07 14:00Z", "12-14 14:00Z"},
		runs("0 9 * * MON", time.Date(2026, 12, 6, 0, 0, 0, 0, ny), 2))
}
