package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// summary prints one of a run's result lines ("name key=value …") and
// keeps it for the medians printed after several runs (-runs).
func (b *bench) summary(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	logf("%s", line)
	if n := len(b.runs); n > 0 {
		b.runs[n-1] = append(b.runs[n-1], line)
	}
}

// startRun begins collecting a run's result lines.
func (b *bench) startRun() { b.runs = append(b.runs, nil) }

// printMedians prints, for every result line of the runs, the median of
// each of its values across the runs, in the same form, prefixed with
// "median": each value's own median, so a ratio is the median ratio, not
// the ratio of the medians.
func (b *bench) printMedians() {
	if len(b.runs) < 2 {
		return
	}
	type field struct {
		key    string
		values []float64
	}
	var order []string
	measures := map[string][]*field{}
	for _, run := range b.runs {
		for _, line := range run {
			name, rest, _ := strings.Cut(line, " ")
			fields, seen := measures[name]
			if !seen {
				order = append(order, name)
			}
			for i, kv := range strings.Fields(rest) {
				k, v, _ := strings.Cut(kv, "=")
				if i >= len(fields) {
					fields = append(fields, &field{key: k})
				}
				if x, err := strconv.ParseFloat(v, 64); err == nil && fields[i].key == k {
					fields[i].values = append(fields[i].values, x)
				}
			}
			measures[name] = fields
		}
	}
	logf("--- medians of %d runs", len(b.runs))
	for _, name := range order {
		parts := []string{"median", name}
		for _, f := range measures[name] {
			parts = append(parts, f.key+"="+formatMedian(f.values))
		}
		logf("%s", strings.Join(parts, " "))
	}
}

func formatMedian(values []float64) string {
	if len(values) == 0 {
		return "NaN"
	}
	v := slices.Clone(values)
	slices.Sort(v)
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	if m >= 100 {
		return fmt.Sprintf("%.0f", m)
	}
	return fmt.Sprintf("%.2f", m)
}
