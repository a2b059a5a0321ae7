package strike_test

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/strike"
)

func TestTextFormRoundTrips(t *testing.T) {
	cases := []struct {
		rule strike.Rule
		text string
	}{
		{strike.Rule{Task: "process_order"}, `process_order`},
		{strike.Rule{Task: "process_order", Param: "customer_id", Op: strike.Eq, Value: "12345"}, `process_order customer_id == "12345"`},
		{strike.Rule{Param: "amount", Op: strike.Gt, Value: 10000}, `* amount > 10000`},
		{strike.Rule{Param: "amount", Value: 1.5}, `* amount == 1.5`},
		{strike.Rule{Task: "t", Param: "ok", Op: strike.Ne, Value: true}, `t ok != true`},
		{strike.Rule{Task: "t", Param: "x", Op: strike.Eq, Value: nil}, `t x == null`},
		{strike.Rule{Task: "process_order", Param: "amount", Op: strike.Between, Value: []int{1000, 5000}, Hold: true},
			`hold process_order amount between [1000,5000]`},
		{strike.Rule{Task: "process_order", Param: "customer_id", Op: strike.Eq, Value: "12345",
			And: []strike.Condition{{Param: "amount", Op: strike.Ge, Value: 1000}}},
			`process_order customer_id == "12345" and amount >= 1000`},
		{strike.Rule{Task: "odd name", Param: `we"ird key`, Op: strike.Le, Value: "a b"}, `"odd name" "we\"ird key" <= "a b"`},
		{strike.Rule{Param: "region", Op: strike.Between, Value: [2]string{"a", "m"}}, `* region between ["a","m"]`},
	}
	for _, c := range cases {
		require.Equal(t, c.text, c.rule.String())
		parsed, err := strike.Parse(c.text)
		require.NoError(t, err, c.text)
		require.Equal(t, c.text, parsed.String())
		want, err := c.rule.Compile()
		require.NoError(t, err)
		got, err := parsed.Compile()
		require.NoError(t, err)
		require.Equal(t, want, got, c.text)
	}
}

func TestInvalidRules(t *testing.T) {
	bad := map[string]strike.Rule{
		"nothing":             {},
		"unknown operator":    {Task: "t", Param: "a", Op: "~=", Value: 1},
		"between one value":   {Task: "t", Param: "a", Op: strike.Between, Value: 5},
		"between three":       {Task: "t", Param: "a", Op: strike.Between, Value: []int{1, 2, 3}},
		"between mixed types": {Task: "t", Param: "a", Op: strike.Between, Value: []any{1, "z"}},
		"unencodable":         {Task: "t", Param: "a", Value: make(chan int)},
		"infinite":            {Task: "t", Param: "a", Value: math.Inf(1)},
		"condition no param":  {Task: "t", And: []strike.Condition{{Op: strike.Eq, Value: 1}}},
		"control character":   {Task: "t\n"},
		"array value":         {Task: "t", Param: "a", Value: []int{1}},
		"object value":        {Task: "t", Param: "a", Value: map[string]int{"k": 1}},
		"ordered boolean":     {Task: "t", Param: "a", Op: strike.Gt, Value: false},
		"ordered null":        {Task: "t", Param: "a", Op: strike.Lt, Value: nil},
	}
	for name, r := range bad {
		_, err := r.Compile()
		require.ErrorIs(t, err, strike.ErrInvalidRule, name)
	}
	for _, text := range []string{
		"", "hold", "t a", "t a == ", "t a ~= 1", "t a == unquoted", `t a == "open`, "t a between [1, 2",
		"t a == 1 or b == 2", "t a == 1 and", "t a == 12345x", "t a == truex", `t a == "x"y`,
	} {
		_, err := strike.Parse(text)
		require.ErrorIs(t, err, strike.ErrInvalidRule, "%q", text)
	}
}
