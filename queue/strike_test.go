package queue_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/strike"
)

// Payment has arguments of every JSON type.
type Payment struct {
	CustomerID string         `json:"customer_id"`
	Amount     float64        `json:"amount"`
	Count      int            `json:"count"`
	Urgent     bool           `json:"urgent"`
	Note       *string        `json:"note"`
	Tags       []string       `json:"tags"`
	Meta       map[string]int `json:"meta"`
}

func (Payment) TaskName() string { return "payment" }

type Refund struct {
	CustomerID string `json:"customer_id"`
}

func (Refund) TaskName() string { return "refund" }

func TestStrikeOperatorsAndTypes(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()
	args := Payment{CustomerID: "12345", Amount: 9.5, Count: 10, Urgent: true, Tags: []string{"a"}, Meta: map[string]int{"k": 1}}
	cases := []struct {
		param string
		op    strike.Op
		value any
		match bool
	}{
		// numbers compare as numbers
		{"amount", strike.Eq, 9.5, true},
		{"amount", strike.Ne, 9.5, false},
		{"amount", strike.Lt, 10, true},
		{"amount", strike.Le, 9.5, true},
		{"amount", strike.Gt, 9, true},
		{"amount", strike.Ge, 9.51, false},
		{"count", strike.Lt, 9.5, false}, // 10 < 9.5 is false, not "10" < "9.5"
		{"count", strike.Gt, 9.5, true},
		{"count", strike.Eq, 10.0, true},
		{"amount", strike.Between, []float64{9, 10}, true},
		{"amount", strike.Between, []float64{9.5, 9.5}, true}, // inclusive
		{"amount", strike.Between, []float64{10, 20}, false},
		// strings compare as strings
		{"customer_id", strike.Eq, "12345", true},
		{"customer_id", strike.Ne, "12345", false},
		{"customer_id", strike.Ne, "999", true},
		{"customer_id", strike.Lt, "2", true}, // "12345" < "2" as strings
		{"customer_id", strike.Ge, "12345", true},
		{"customer_id", strike.Between, []string{"1", "13"}, true},
		// mismatched types never match
		{"customer_id", strike.Eq, 12345, false},
		{"customer_id", strike.Ne, 12345, false},
		{"amount", strike.Eq, "9.5", false},
		{"amount", strike.Between, []string{"0", "z"}, false},
		{"customer_id", strike.Between, []int{0, 99999}, false},
		// booleans and null only with == and !=
		{"urgent", strike.Eq, true, true},
		{"urgent", strike.Ne, true, false},
		{"urgent", strike.Ne, false, true},
		{"note", strike.Eq, nil, true},
		{"note", strike.Ne, nil, false},
		{"customer_id", strike.Ne, nil, false}, // another type: no match
		{"urgent", strike.Eq, "true", false},
		// an array or object argument never equals a scalar
		{"tags", strike.Eq, "a", false},
		{"meta", strike.Ne, 1, false},
		// an absent parameter never matches
		{"missing", strike.Eq, nil, false},
		{"missing", strike.Ne, 1, false},
	}
	for i, c := range cases {
		rule := strike.Rule{Task: "payment", Param: c.param, Op: c.op, Value: c.value}
		inserted, err := b.q.Strike(ctx, rule)
		require.NoError(t, err)
		require.True(t, inserted)
		ex, err := b.q.Add(ctx, args, nil)
		require.NoError(t, err)
		want := queue.DispositionScheduled
		if c.match {
			want = queue.DispositionStruck
			require.Equal(t, rule.String(), ex.StruckBy)
		}
		require.Equal(t, want, ex.Disposition, "case %d: %s", i, rule)
		removed, err := b.q.Restore(ctx, rule)
		require.NoError(t, err)
		require.True(t, removed)
	}
}

func TestStrikeShapes(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()
	add := func(args queue.Args) queue.Disposition {
		t.Helper()
		ex, err := b.q.Add(ctx, args, nil)
		require.NoError(t, err)
		return ex.Disposition
	}
	scheduled, struck := queue.DispositionScheduled, queue.DispositionStruck

	// The whole task.
	whole := strike.Rule{Task: "payment"}
	_, err := b.q.Strike(ctx, whole)
	require.NoError(t, err)
	require.Equal(t, struck, add(Payment{}))
	require.Equal(t, scheduled, add(Refund{}))
	_, err = b.q.Restore(ctx, whole)
	require.NoError(t, err)
	require.Equal(t, scheduled, add(Payment{}))

	// A parameter across every task.
	customer := strike.Rule{Param: "customer_id", Op: strike.Eq, Value: "bad"}
	_, err = b.q.Strike(ctx, customer)
	require.NoError(t, err)
	require.Equal(t, struck, add(Payment{CustomerID: "bad"}))
	require.Equal(t, struck, add(Refund{CustomerID: "bad"}))
	require.Equal(t, scheduled, add(Refund{CustomerID: "good"}))
	_, err = b.q.Restore(ctx, customer)
	require.NoError(t, err)

	// A task and a parameter, and several conditions that must all hold.
	both := strike.Rule{Task: "payment", Param: "customer_id", Op: strike.Eq, Value: "12345",
		And: []strike.Condition{{Param: "amount", Op: strike.Ge, Value: 1000}}}
	_, err = b.q.Strike(ctx, both)
	require.NoError(t, err)
	require.Equal(t, struck, add(Payment{CustomerID: "12345", Amount: 5000}))
	require.Equal(t, scheduled, add(Payment{CustomerID: "12345", Amount: 10}))
	require.Equal(t, scheduled, add(Payment{CustomerID: "other", Amount: 5000}))
	require.Equal(t, scheduled, add(Refund{CustomerID: "12345"}))

	// Separate strikes are independent: matching any strikes the task.
	_, err = b.q.Strike(ctx, strike.Rule{Param: "amount", Op: strike.Gt, Value: 100000})
	require.NoError(t, err)
	require.Equal(t, struck, add(Payment{CustomerID: "other", Amount: 200000}))

	list, err := b.q.Strikes(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, both.String(), list[0].Text)
	require.Equal(t, both.String(), list[0].Rule.String())

	// Strike and restore are idempotent, and restore removes exactly its rule.
	again, err := b.q.Strike(ctx, both)
	require.NoError(t, err)
	require.False(t, again)
	removed, err := b.q.Restore(ctx, strike.Rule{Task: "payment", Param: "customer_id", Op: strike.Eq, Value: "12345"})
	require.NoError(t, err)
	require.False(t, removed, "a rule with fewer conditions is another rule")
	removed, err = b.q.Restore(ctx, both)
	require.NoError(t, err)
	require.True(t, removed)
	removed, err = b.q.Restore(ctx, both)
	require.NoError(t, err)
	require.False(t, removed)
}

func TestStrikesAreScopedToTheirQueue(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	other := setup(t, queue.Config{})
	ctx := t.Context()
	_, err := b.q.Strike(ctx, strike.Rule{Task: "payment"})
	require.NoError(t, err)
	ex, err := other.q.Add(ctx, Payment{}, nil)
	require.NoError(t, err)
	require.Equal(t, queue.DispositionScheduled, ex.Disposition)
}

func TestStrikeBatchAndReplace(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()
	_, err := b.q.Strike(ctx, strike.Rule{Param: "customer_id", Op: strike.Eq, Value: "bad"})
	require.NoError(t, err)
	out, err := b.q.AddMany(ctx, []queue.Entry{
		{Args: Payment{CustomerID: "good"}}, {Args: Payment{CustomerID: "bad"}}, {Args: Refund{CustomerID: "bad"}},
	})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionScheduled, out[0].Disposition)
	require.Equal(t, queue.DispositionStruck, out[1].Disposition)
	require.Equal(t, queue.DispositionStruck, out[2].Disposition)
	require.Equal(t, 1, countRows(t, b.pool, b.q.Name()))

	_, err = b.q.Add(ctx, Payment{CustomerID: "good"}, &queue.AddOpts{Key: "k", When: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	ex, err := b.q.Replace(ctx, Payment{CustomerID: "bad"}, queue.AddOpts{Key: "k", When: time.Now()})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionStruck, ex.Disposition)
	got, err := b.q.Execution(ctx, "k")
	require.NoError(t, err)
	require.JSONEq(t, `"good"`, string(mustField(t, got.Args, "customer_id")), "a struck replace changes nothing")
}

func mustField(t *testing.T, raw json.RawMessage, name string) json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &m))
	return m[name]
}

func TestStrikeParametersAreData(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()
	weird := []string{`a'b`, `x"; DROP TABLE shadows.strikes; --`, `$.customer_id`, `{customer_id}`, `customer_id->>0`, `a;b`}
	for _, p := range weird {
		rule := strike.Rule{Param: p, Op: strike.Eq, Value: p + `'); DELETE FROM shadows.tasks; --`}
		_, err := b.q.Strike(ctx, rule)
		require.NoError(t, err, p)
		ex, err := b.q.Add(ctx, Payment{CustomerID: "12345"}, nil)
		require.NoError(t, err)
		require.Equal(t, queue.DispositionScheduled, ex.Disposition, "parameter %q must not match customer_id", p)
		removed, err := b.q.Restore(ctx, rule)
		require.NoError(t, err)
		require.True(t, removed)
	}
	list, err := b.q.Strikes(ctx)
	require.NoError(t, err)
	require.Empty(t, list)
	require.Equal(t, len(weird), countRows(t, b.pool, b.q.Name()))
}

func TestInvalidStrikesStoreNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()
	for i, r := range []strike.Rule{
		{},
		{Task: "payment", Param: "amount", Op: "=~", Value: 1},
		{Task: "payment", Param: "amount", Op: strike.Between, Value: 1},
		{Task: "payment", Param: "amount", Value: func() {}},
	} {
		_, err := b.q.Strike(ctx, r)
		require.ErrorIs(t, err, strike.ErrInvalidRule, "rule %d", i)
		_, err = b.q.Restore(ctx, r)
		require.ErrorIs(t, err, strike.ErrInvalidRule, "rule %d", i)
	}
	list, err := b.q.Strikes(ctx)
	require.NoError(t, err)
	require.Empty(t, list)
	// Striking a task nobody registered is fine.
	inserted, err := b.q.Strike(ctx, strike.Rule{Task: fmt.Sprintf("unregistered_%d", time.Now().UnixNano())})
	require.NoError(t, err)
	require.True(t, inserted)
}
