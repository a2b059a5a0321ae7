package cli

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// envAnnotation is the flag annotation naming a flag's environment variable.
const envAnnotation = "shadows_env"

// withEnv makes the environment variable env the fallback of flag name in
// fs, and says so in the flag's help.
func withEnv(fs *pflag.FlagSet, name, env string) {
	f := fs.Lookup(name)
	f.Usage += " [$" + env + "]"
	_ = fs.SetAnnotation(name, envAnnotation, []string{env}) // the flag exists
}

// applyEnv sets every flag of cmd that was not given on the command line
// from its environment variable, when that is set and not empty.
func applyEnv(cmd *cobra.Command) error {
	var errs []error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		envs := f.Annotations[envAnnotation]
		if f.Changed || len(envs) == 0 {
			return
		}
		v := os.Getenv(envs[0])
		if v == "" {
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("invalid $%s %q for --%s: %w", envs[0], v, f.Name, err))
		}
	})
	return errors.Join(errs...)
}

// parseDuration reads a duration in Go's syntax (1m30s, 250ms, 2h) or in
// docket's: a plain number of seconds (123, 1.5), mm:ss or hh:mm:ss.
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, badDuration(s)
	}
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	if secs, err := strconv.ParseFloat(s, 64); err == nil && !strings.ContainsAny(s, "xXpPeEinIN") {
		return seconds(secs, s)
	}
	parts := strings.Split(s, ":")
	if len(parts) == 2 || len(parts) == 3 {
		var total float64
		for i, p := range parts {
			last := i == len(parts)-1
			var v float64
			if last {
				f, err := strconv.ParseFloat(p, 64)
				if err != nil || strings.ContainsAny(p, "+-xXpPeEinIN") {
					return 0, badDuration(s)
				}
				v = f
			} else {
				n, err := strconv.ParseUint(p, 10, 32)
				if err != nil {
					return 0, badDuration(s)
				}
				v = float64(n)
			}
			// Every field but the first counts up to 59.
			if i > 0 && v >= 60 {
				return 0, badDuration(s)
			}
			total = total*60 + v
		}
		return seconds(total, s)
	}
	return 0, badDuration(s)
}

func seconds(secs float64, s string) (time.Duration, error) {
	if math.IsNaN(secs) || math.IsInf(secs, 0) || math.Abs(secs) > math.MaxInt64/float64(time.Second) {
		return 0, badDuration(s)
	}
	return time.Duration(math.Round(secs * float64(time.Second))), nil
}

func badDuration(s string) error {
	return fmt.Errorf("%q is not a duration: use Go's syntax (90s, 1m30s, 250ms), seconds (90) or mm:ss / hh:mm:ss", s)
}

// formatDuration prints d as Go does, without zero trailing units: 5m
// rather than 5m0s.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// durationValue is a flag holding a duration parsed by parseDuration.
type durationValue struct {
	d        *time.Duration
	positive bool // zero and negative durations are refused
}

func (v durationValue) String() string {
	if v.d == nil || *v.d == 0 {
		return "0" // which help shows as no default
	}
	return formatDuration(*v.d)
}

func (v durationValue) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	switch {
	case v.positive && d <= 0:
		return fmt.Errorf("%s: must be more than zero", s)
	case d < 0:
		return fmt.Errorf("%s: must not be negative", s)
	}
	*v.d = d
	return nil
}

func (durationValue) Type() string { return "duration" }

// intValue is a flag holding a whole number of at least min.
type intValue struct {
	n   *int
	min int
}

func (v intValue) String() string {
	if v.n == nil {
		return ""
	}
	return strconv.Itoa(*v.n)
}

func (v intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q is not a whole number", s)
	}
	if n < v.min {
		return fmt.Errorf("%d is less than %d", n, v.min)
	}
	*v.n = n
	return nil
}

func (intValue) Type() string { return "int" }

// enumValue is a flag holding one of a fixed set of words.
type enumValue struct {
	s       *string
	allowed []string
}

func (v enumValue) String() string {
	if v.s == nil {
		return ""
	}
	return *v.s
}

func (v enumValue) Set(s string) error {
	w := strings.ToLower(strings.TrimSpace(s))
	if !slices.Contains(v.allowed, w) {
		return fmt.Errorf("%q is not one of %s", s, strings.Join(v.allowed, ", "))
	}
	*v.s = w
	return nil
}

func (v enumValue) Type() string { return strings.Join(v.allowed, "|") }

// enumFlag defines an enumValue flag with shell completion of its words.
func enumFlag(cmd *cobra.Command, p *string, name, def, usage string, allowed ...string) {
	*p = def
	cmd.Flags().Var(enumValue{s: p, allowed: allowed}, name, usage)
	_ = cmd.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(allowed, cobra.ShellCompDirectiveNoFileComp))
}

// parseWhen reads an absolute time: RFC 3339 (2025-06-01T15:04:05Z), or
// "2006-01-02 15:04[:05]" in local time.
func parseWhen(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02 15:04", "2006-01-02T15:04"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time: use RFC 3339 (2025-06-01T15:04:05Z) or 2025-06-01 15:04:05 (local time)", s)
}

// timeValue is a flag holding an absolute time parsed by parseWhen.
type timeValue struct{ t *time.Time }

func (v timeValue) String() string {
	if v.t == nil || v.t.IsZero() {
		return ""
	}
	return v.t.Format(time.RFC3339)
}

func (v timeValue) Set(s string) error {
	t, err := parseWhen(s)
	if err != nil {
		return err
	}
	*v.t = t
	return nil
}

func (timeValue) Type() string { return "time" }
