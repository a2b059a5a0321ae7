package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// clean makes text read from the database safe to print: control
// characters, which could move the cursor or break a table, become '?'.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

// cleanLines is clean for text that may span lines, such as an error: it
// keeps newlines and tabs.
func cleanLines(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' {
			return r
		}
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

// oneLine joins the lines of an error message into one, so that a failure
// prints as a single line; repeated lines (pgx reports each connection
// attempt) appear once. Cobra's "Did you mean this?" list becomes a
// question.
func oneLine(msg string) string {
	var b strings.Builder
	var suggestions []string
	seen := make(map[string]bool)
	suggesting := false
	for _, l := range strings.Split(msg, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || seen[l]:
		case l == "Did you mean this?":
			suggesting = true
		case suggesting:
			suggestions = append(suggestions, fmt.Sprintf("%q", l))
		default:
			seen[l] = true
			switch s := b.String(); {
			case s == "":
			case strings.HasSuffix(s, ":"):
				b.WriteString(" ")
			default:
				b.WriteString("; ")
			}
			b.WriteString(l)
		}
	}
	if len(suggestions) > 0 {
		b.WriteString(" (did you mean " + strings.Join(suggestions, " or ") + "?)")
	}
	return b.String()
}

// relative says when t is, seen from now: "in 5s", "3m20s ago", or the
// date and time when it is more than 30 minutes away.
func relative(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := t.Sub(now)
	switch {
	case d > 30*time.Minute || d < -30*time.Minute:
		return "at " + t.Local().Format("2006-01-02 15:04:05 -0700")
	case d >= 0:
		return "in " + shortDuration(d)
	default:
		return shortDuration(-d) + " ago"
	}
}

// shortDuration rounds d for people: milliseconds below a second, whole
// seconds below an hour, minutes above.
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return formatDuration(d.Round(time.Second))
	default:
		return formatDuration(d.Round(time.Minute))
	}
}

// table writes aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(header...)
	return t
}

// row adds a row; the cells must already be cleaned.
func (t *table) row(cells ...string) {
	for len(cells) > 1 && cells[len(cells)-1] == "" {
		cells = cells[:len(cells)-1] // no padding at the end of the line
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// progressBar draws current out of total as a bar of width cells, with the
// percentage and the counts. A total of zero means the handler has not
// said how far it has to go: only the count is shown.
func progressBar(current, total int64, width int) string {
	if total <= 0 {
		return fmt.Sprintf("%d done", current)
	}
	frac := float64(current) / float64(total)
	frac = min(max(frac, 0), 1)
	filled := int(frac * float64(width))
	return fmt.Sprintf("[%s%s] %3d%% %d/%d",
		strings.Repeat("█", filled), strings.Repeat("░", width-filled), int(frac*100), current, total)
}
