package strike_test

import (
	"errors"
	"fmt"

	"github.com/shadows-go/shadows/strike"
)

// The shapes a rule takes, with their text form (Rule.String): a whole
// task; a parameter across every task ("*"); a task and a parameter;
// several conditions that must all hold; a range; and a hold.
func ExampleRule() {
	for _, r := range []strike.Rule{
		{Task: "process_order"},
		{Param: "customer_id", Op: strike.Eq, Value: "12345"},
		{Task: "process_payment", Param: "amount", Op: strike.Gt, Value: 10000},
		{Task: "process_order", Param: "customer_id", Op: strike.Eq, Value: "12345",
			And: []strike.Condition{{Param: "amount", Op: strike.Ge, Value: 1000}}},
		{Task: "process_order", Param: "amount", Op: strike.Between, Value: []int{1000, 5000}},
		{Param: "region", Op: strike.Ne, Value: "eu", Hold: true},
	} {
		fmt.Println(r)
	}
	// Output:
	// process_order
	// * customer_id == "12345"
	// process_payment amount > 10000
	// process_order customer_id == "12345" and amount >= 1000
	// process_order amount between [1000,5000]
	// hold * region != "eu"
}

// Parse reads the text form, as typed on the command line or found in a
// log: an optional "hold", a task name or "*", then conditions joined by
// "and". Values are JSON: strings are quoted, numbers are not.
func ExampleParse() {
	r, err := strike.Parse(`process_order customer_id == "12345" and amount >= 1000`)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("task %s: %s %s %v, then %d more condition(s)\n", r.Task, r.Param, r.Op, r.Value, len(r.And))
	fmt.Println(r)

	_, err = strike.Parse(`process_order amount ~ 1000`)
	fmt.Println(errors.Is(err, strike.ErrInvalidRule), err)
	_, err = strike.Parse(`process_order customer_id == ada`)
	fmt.Println(errors.Is(err, strike.ErrInvalidRule), err)
	// Output:
	// task process_order: customer_id == 12345, then 1 more condition(s)
	// process_order customer_id == "12345" and amount >= 1000
	// true invalid strike rule: unknown operator "~" (want ==, !=, <, <=, >, >= or between)
	// true invalid strike rule: value ada is not a JSON literal (quote strings)
}
