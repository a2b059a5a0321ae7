package worker

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// Two limits naming the same key are one slot under the smaller maximum:
// a run asking twice for one key's slot would make the database refuse the
// whole batch.
func TestLimitKeysMergeLimitsOnTheSameKey(t *testing.T) {
	got, err := limitKeys("backup", []ConcurrencyLimit{
		{Arg: "db", Max: 3},
		{Arg: "db", Max: 1},
		{Arg: "db", Max: 2, Scope: "nightly"},
	}, json.RawMessage(`{"db": "main"}`), nil)
	require.NoError(t, err)
	require.Equal(t, []slotRequest{{key: "db:main", max: 1}, {key: "nightly/db:main", max: 2}}, got)
}
