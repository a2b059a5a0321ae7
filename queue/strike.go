package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"go.opentelemetry.io/otel/attribute"

	"github.com/shadows-go/shadows/db"
	"github.com/shadows-go/shadows/internal/telemetry"
	"github.com/shadows-go/shadows/strike"
)

// Strike stores rule for this queue and reports whether it is new (striking
// twice is a no-op). From the moment it commits, adds of matching tasks
// store nothing (DispositionStruck), and matching tasks that come due are
// cancelled — or, for a Hold rule, kept waiting until it is restored.
// Running tasks are never interrupted. The rule may name a task no worker
// here has registered. An invalid rule returns an error wrapping
// strike.ErrInvalidRule and stores nothing.
func (q *Queue) Strike(ctx context.Context, rule strike.Rule) (bool, error) {
	return q.strike(ctx, q.pool, rule)
}

// StrikeTx is Strike inside the caller's transaction.
func (q *Queue) StrikeTx(ctx context.Context, tx pgx.Tx, rule strike.Rule) (bool, error) {
	return q.strike(ctx, tx, rule)
}

func (q *Queue) strike(ctx context.Context, conn dbtx, rule strike.Rule) (_ bool, err error) {
	ctx, span := q.tel.StartSpan(ctx, "shadows.strike", attribute.String("shadows.rule", rule.String()))
	defer func() { telemetry.EndSpan(span, err) }()
	c, err := rule.Compile()
	if err != nil {
		return false, err
	}
	var task *string
	if c.Task != "" {
		task = &c.Task
	}
	inserted, err := q.queries.InsertStrike(ctx, conn, db.InsertStrikeParams{
		Queue: q.cfg.Name, Task: task, Path: c.Path, Hold: c.Hold, Rule: c.Text,
	})
	if err != nil {
		return false, fmt.Errorf("strike %s: %w", c.Text, err)
	}
	return inserted, nil
}

// Restore removes exactly rule (as struck: same task, conditions and Hold)
// and reports whether it was there; restoring twice is a no-op. Tasks a Hold
// rule kept waiting are released and judged afresh against the strikes that
// remain.
func (q *Queue) Restore(ctx context.Context, rule strike.Rule) (bool, error) {
	return q.restore(ctx, q.pool, rule)
}

// RestoreTx is Restore inside the caller's transaction.
func (q *Queue) RestoreTx(ctx context.Context, tx pgx.Tx, rule strike.Rule) (bool, error) {
	return q.restore(ctx, tx, rule)
}

func (q *Queue) restore(ctx context.Context, conn dbtx, rule strike.Rule) (_ bool, err error) {
	ctx, span := q.tel.StartSpan(ctx, "shadows.restore", attribute.String("shadows.rule", rule.String()))
	defer func() { telemetry.EndSpan(span, err) }()
	c, err := rule.Compile()
	if err != nil {
		return false, err
	}
	row, err := q.queries.DeleteStrike(ctx, conn, db.DeleteStrikeParams{Queue: q.cfg.Name, Rule: c.Text})
	if err != nil {
		return false, fmt.Errorf("restore %s: %w", c.Text, err)
	}
	return row.Removed > 0, nil
}

// StrikeInfo is an active strike.
type StrikeInfo struct {
	// Rule is the strike; zero if its stored text does not parse (a row
	// written by hand).
	Rule strike.Rule
	// Text is the rule's text form as stored.
	Text    string
	Created time.Time
}

// Strikes lists the queue's active strikes, oldest first.
func (q *Queue) Strikes(ctx context.Context) ([]StrikeInfo, error) {
	rows, err := q.queries.ListStrikes(ctx, q.pool, q.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("list strikes: %w", err)
	}
	out := make([]StrikeInfo, 0, len(rows))
	for _, r := range rows {
		rule, err := strike.Parse(r.Rule)
		if err != nil {
			q.cfg.Logger.Warn("stored strike does not parse", "queue", q.cfg.Name, "rule", r.Rule, "error", err)
		}
		out = append(out, StrikeInfo{Rule: rule, Text: r.Rule, Created: r.CreatedAt})
	}
	return out, nil
}
