package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/shadows-go/shadows/strike"
)

// ruleHelp describes the arguments of strike and restore.
const ruleHelp = `TASK is a task name, or "*" (or "") for every task. Without a condition the
task is struck whole. A condition is PARAMETER OPERATOR VALUE: PARAMETER is a
top-level key of the task's JSON arguments, OPERATOR one of ==, !=, <, <=,
>, >= (or eq, ne, lt, le, gt, ge, which need no quoting in a shell) and
between, which is inclusive and takes two values, LOW and HIGH. More
conditions may follow, each after the word "and"; all of them must hold.

VALUE is typed by a prefix:
  int:42          a whole number
  float:3.5       a number
  bool:true       true or false
  str:TEXT        the text TEXT, whatever it looks like
  json:LITERAL    a JSON literal: json:null, json:"text", json:[1000,5000]
  TEXT            without a prefix, the text itself
A value matches only an argument of the same JSON type (int:42 never matches
the text "42"; numbers compare as numbers, so int:42 matches 42.0). A prefix
made of letters that is none of these is refused, to catch typos: write
str:user:42 for text that looks like one. null is json:null; a bare null is
the text "null". between takes LOW and HIGH as two numbers or two texts
(between int:1 int:5), or one JSON pair (between json:[1,5]).

The rule prints in its text form, as "strikes" lists it. --rule takes that
form instead of the arguments.`

func (a *app) strikeCommand() *cobra.Command {
	f := &ruleFlags{}
	cmd := &cobra.Command{
		Use:   "strike [TASK] [PARAMETER OPERATOR VALUE [HIGH]] [and PARAMETER OPERATOR VALUE [HIGH]]...",
		Short: "Stop tasks from running: a whole task, or those whose arguments match",
		Long: `Strike tasks so that they do not run. From the moment the strike is stored,
adding a matching task stores nothing, and matching tasks that were already
waiting are cancelled when they come due. With --hold, matching tasks, added
before or after, are instead kept waiting, untouched, until the strike is
restored. Running tasks are not interrupted. Striking a rule that is already
struck changes nothing.

` + ruleHelp,
		Example: `  ` + a.cfg.Name + ` strike process_order                                   # every process_order task
  ` + a.cfg.Name + ` strike process_order amount gt int:1000                # amount > 1000
  ` + a.cfg.Name + ` strike '*' customer_id == 12345                        # any task whose customer_id is the text "12345"
  ` + a.cfg.Name + ` strike process_order amount between int:1000 int:5000  # 1000 <= amount <= 5000
  ` + a.cfg.Name + ` strike process_order region == eu and amount '>=' float:99.5
  ` + a.cfg.Name + ` strike --hold send_email                               # keep send_email tasks waiting`,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: a.completeRule,
		RunE: func(cmd *cobra.Command, argv []string) error {
			rule, err := f.rule(argv)
			if err != nil {
				return err
			}
			q, err := a.openQueue(cmd, "strike")
			if err != nil {
				return err
			}
			defer q.Pool().Close()
			inserted, err := q.Strike(cmd.Context(), rule)
			if err != nil {
				return ruleError(err)
			}
			if inserted {
				fmt.Fprintf(cmd.OutOrStdout(), "struck: %s\n", clean(rule.String()))
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "already struck: %s\n", clean(rule.String()))
			}
			return nil
		},
	}
	f.define(cmd, "keep matching tasks waiting until the strike is restored, instead of cancelling them")
	return cmd
}

func (a *app) restoreCommand() *cobra.Command {
	f := &ruleFlags{}
	cmd := &cobra.Command{
		Use:   "restore [TASK] [PARAMETER OPERATOR VALUE [HIGH]] [and PARAMETER OPERATOR VALUE [HIGH]]...",
		Short: "Remove a strike, with the same arguments that struck it",
		Long: `Remove a strike: the one with exactly these task, conditions and --hold.
Tasks added from then on run again, and tasks that a hold kept waiting are
released (unless another strike matches them). Tasks cancelled by the strike
stay cancelled. Restoring a rule that is not struck changes nothing; a hold
is restored only with --hold, as its text form begins with "hold".

` + ruleHelp,
		Example: `  ` + a.cfg.Name + ` restore process_order amount gt int:1000
  ` + a.cfg.Name + ` restore --hold send_email
  ` + a.cfg.Name + ` restore --rule 'process_order customer_id == "12345"'   # the text form, as "strikes" lists it`,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: a.completeRule,
		RunE: func(cmd *cobra.Command, argv []string) error {
			rule, err := f.rule(argv)
			if err != nil {
				return err
			}
			q, err := a.openQueue(cmd, "restore")
			if err != nil {
				return err
			}
			defer q.Pool().Close()
			ctx := cmd.Context()
			removed, err := q.Restore(ctx, rule)
			if err != nil {
				return ruleError(err)
			}
			out := cmd.OutOrStdout()
			if removed {
				fmt.Fprintf(out, "restored: %s\n", clean(rule.String()))
				return nil
			}
			fmt.Fprintf(out, "nothing to restore: %s", clean(rule.String()))
			// The same rule struck with the other --hold is the likely mistake.
			other := rule
			other.Hold = !rule.Hold
			if active, err := q.Strikes(ctx); err == nil {
				for _, s := range active {
					if s.Text == other.String() {
						flag := "with --hold"
						if rule.Hold {
							flag = "without --hold"
						}
						fmt.Fprintf(out, " (%s is struck: restore it %s)", clean(s.Text), flag)
						break
					}
				}
			}
			fmt.Fprintln(out)
			return nil
		},
	}
	f.define(cmd, "restore a hold (a strike made with --hold)")
	return cmd
}

func (a *app) strikesCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "strikes",
		Short: "List the queue's strikes, oldest first",
		Long: `List the queue's strikes, oldest first, with when each was struck and its
rule in text form, which "restore --rule" takes.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, err := a.openQueue(cmd, "strikes")
			if err != nil {
				return err
			}
			defer q.Pool().Close()
			active, err := q.Strikes(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(active) == 0 {
				fmt.Fprintf(out, "No strikes on queue %q\n", clean(q.Name()))
				return nil
			}
			now := time.Now()
			t := newTable(out, "STRUCK", "RULE")
			for _, s := range active {
				when := relative(s.Created, now)
				if s.Created.After(now) {
					when = "just now" // the clocks of the server and this machine differ
				}
				t.row(when, clean(s.Text))
			}
			return t.flush()
		},
	}
}

// ruleError makes an invalid rule a usage error.
func ruleError(err error) error {
	if errors.Is(err, strike.ErrInvalidRule) {
		return &usageError{err}
	}
	return err
}

// ruleFlags are the flags of strike and restore.
type ruleFlags struct {
	hold bool
	text string
}

func (f *ruleFlags) define(cmd *cobra.Command, holdUsage string) {
	cmd.Flags().BoolVar(&f.hold, "hold", false, holdUsage)
	cmd.Flags().StringVar(&f.text, "rule", "", "the rule in its text form, as \"strikes\" lists it, instead of the arguments")
	cmd.MarkFlagsMutuallyExclusive("hold", "rule")
}

// rule returns the rule that the arguments or --rule describe.
func (f *ruleFlags) rule(argv []string) (strike.Rule, error) {
	if f.text != "" {
		if len(argv) > 0 {
			return strike.Rule{}, usagef("give either --rule or arguments, not both")
		}
		r, err := strike.Parse(f.text)
		if err != nil {
			return strike.Rule{}, usagef("--rule: %w", err)
		}
		return r, nil
	}
	return parseRule(argv, f.hold)
}

// parseRule reads TASK [PARAMETER OPERATOR VALUE [HIGH]] [and …]….
func parseRule(argv []string, hold bool) (strike.Rule, error) {
	r := strike.Rule{Hold: hold}
	if len(argv) > 0 && argv[0] != "*" {
		r.Task = argv[0]
	}
	var rest []string
	if len(argv) > 1 {
		rest = argv[1:]
	}
	if len(rest) == 1 && (rest[0] == "*" || rest[0] == "") {
		rest = nil // docket's way of saying "no parameter"
	}
	var conds []strike.Condition
	for len(rest) > 0 {
		c, n, err := parseCondition(rest)
		if err != nil {
			return strike.Rule{}, err
		}
		conds = append(conds, c)
		rest = rest[n:]
		if len(rest) > 0 {
			if rest[0] != "and" {
				return strike.Rule{}, usagef("expected \"and\" before %q: a condition is PARAMETER OPERATOR VALUE, and conditions are joined by \"and\"", rest[0])
			}
			if rest = rest[1:]; len(rest) == 0 {
				return strike.Rule{}, usagef("nothing follows the last \"and\"")
			}
		}
	}
	if r.Task == "" && len(conds) == 0 {
		return strike.Rule{}, usagef("give a TASK, a condition PARAMETER OPERATOR VALUE, or both (\"*\" alone would be every task)")
	}
	if len(conds) > 0 {
		r.Param, r.Op, r.Value = conds[0].Param, conds[0].Op, conds[0].Value
		r.And = conds[1:]
	}
	if _, err := r.Compile(); err != nil {
		return strike.Rule{}, &usageError{err}
	}
	return r, nil
}

// parseCondition reads PARAMETER OPERATOR VALUE [HIGH] at the start of
// toks and returns how many it used.
func parseCondition(toks []string) (strike.Condition, int, error) {
	param := toks[0]
	if param == "" || param == "*" {
		return strike.Condition{}, 0, usagef("PARAMETER %q: a condition needs a parameter's name", param)
	}
	if len(toks) < 2 || toks[1] == "and" {
		return strike.Condition{}, 0, usagef("%q lacks OPERATOR and VALUE: a condition is PARAMETER OPERATOR VALUE", param)
	}
	op, err := parseOp(toks[1])
	if err != nil {
		return strike.Condition{}, 0, err
	}
	if len(toks) < 3 {
		return strike.Condition{}, 0, usagef("%s %s lacks its VALUE", param, op)
	}
	v, err := parseValue(toks[2])
	if err != nil {
		return strike.Condition{}, 0, err
	}
	if op != strike.Between {
		return strike.Condition{Param: param, Op: op, Value: v}, 3, nil
	}
	if raw, ok := v.(json.RawMessage); ok && strings.HasPrefix(string(raw), "[") {
		return strike.Condition{Param: param, Op: op, Value: v}, 3, nil // json:[low,high]
	}
	if len(toks) < 4 || toks[3] == "and" {
		return strike.Condition{}, 0, usagef("%s between %s lacks HIGH: between takes two values, LOW and HIGH (between int:1 int:5)", param, toks[2])
	}
	hi, err := parseValue(toks[3])
	if err != nil {
		return strike.Condition{}, 0, err
	}
	return strike.Condition{Param: param, Op: op, Value: []any{v, hi}}, 4, nil
}

// opAliases are the operators' spellings that a shell leaves alone.
var opAliases = map[string]strike.Op{
	"eq": strike.Eq, "ne": strike.Ne, "lt": strike.Lt, "le": strike.Le, "gt": strike.Gt, "ge": strike.Ge,
}

func parseOp(s string) (strike.Op, error) {
	if op, ok := opAliases[strings.ToLower(s)]; ok {
		return op, nil
	}
	op := strike.Op(strings.ToLower(s))
	if op.Validate() != nil {
		return "", usagef("OPERATOR %q is not one of ==, !=, <, <=, >, >=, between (or eq, ne, lt, le, gt, ge)", s)
	}
	return op, nil
}

// parseValue reads a VALUE: type:value, or plain text.
func parseValue(s string) (any, error) {
	typ, v, ok := strings.Cut(s, ":")
	if !ok || !isTypeName(typ) {
		return s, nil
	}
	bad := func(what string) error {
		return usagef("VALUE %q: %q is not %s", s, v, what)
	}
	switch strings.ToLower(typ) {
	case "int":
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return nil, bad("a whole number")
		}
		return n, nil
	case "float":
		x, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, bad("a finite number")
		}
		return x, nil
	case "bool":
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
		return nil, bad("true or false")
	case "str":
		return v, nil
	case "json":
		raw := json.RawMessage(strings.TrimSpace(v))
		if !json.Valid(raw) {
			return nil, bad("a JSON literal (null, 42, \"text\", [1,5]…)")
		}
		return raw, nil
	}
	return nil, usagef("VALUE %q: unknown type %q: use int:, float:, bool:, str: or json: (str:%s for this text)", s, typ, s)
}

// isTypeName reports whether s looks like a type prefix: a letter, then
// letters, digits, '_' or '.' (docket's decimal.Decimal, say).
func isTypeName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		letter := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if i == 0 && !letter || !letter && (r < '0' || r > '9') && r != '_' && r != '.' {
			return false
		}
	}
	return true
}

// completeRule completes TASK with the registered tasks and OPERATOR with
// the operators.
func (a *app) completeRule(_ *cobra.Command, argv []string, _ string) ([]string, cobra.ShellCompDirective) {
	switch {
	case len(argv) == 0:
		return append([]string{"*"}, a.cfg.Registry.Names()...), cobra.ShellCompDirectiveNoFileComp
	case len(argv) == 2 || len(argv) > 4 && argv[len(argv)-2] == "and":
		return []string{"==", "!=", "<", "<=", ">", ">=", "between"}, cobra.ShellCompDirectiveNoFileComp
	}
	return nil, cobra.ShellCompDirectiveNoFileComp
}
