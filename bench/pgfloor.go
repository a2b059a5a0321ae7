package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// floor runs the pgfloor yardstick, built once per bench run.
type floor struct {
	bin string
}

// preparePgfloor returns a runnable pgfloor. spec is a binary, a source
// directory, or empty for ../shared/tools/pgfloor beside the repository
// root. A source directory is built into a temporary directory (it may be
// read-only), which the returned function removes.
func preparePgfloor(ctx context.Context, spec string) (*floor, func(), error) {
	noop := func() {}
	if spec == "" {
		root, err := repoRoot()
		if err != nil {
			return nil, noop, fmt.Errorf("locate pgfloor: %w (or pass -pgfloor)", err)
		}
		spec = filepath.Join(filepath.Dir(root), "shared", "tools", "pgfloor")
	}
	fi, err := os.Stat(spec)
	if err != nil {
		return nil, noop, fmt.Errorf("pgfloor: %w (pass -pgfloor with the pgfloor source directory or binary)", err)
	}
	if !fi.IsDir() {
		return &floor{bin: spec}, noop, nil
	}
	tmp, err := os.MkdirTemp("", "bench-pgfloor-")
	if err != nil {
		return nil, noop, fmt.Errorf("pgfloor: %w", err)
	}
	done := func() { os.RemoveAll(tmp) }
	bin := filepath.Join(tmp, "pgfloor")
	bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(bctx, "go", "build", "-o", bin, ".")
	cmd.Dir = spec
	// pgfloor is its own module: never let a go.work of ours take it over.
	cmd.Env = append(os.Environ(), "GOWORK=off")
	cmd.WaitDelay = 10 * time.Second
	t0 := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		done()
		return nil, noop, fmt.Errorf("build pgfloor in %s: %w\n%s", spec, err, out)
	}
	logf("pgfloor: built %s in %.1fs", spec, time.Since(t0).Seconds())
	return &floor{bin: bin}, done, nil
}

// repoRoot walks up from the working directory to the go.mod of this module.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/shadows-go/shadows\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the github.com/shadows-go/shadows module")
		}
		dir = parent
	}
}

// floorResult holds the numbers pgfloor printed.
type floorResult struct {
	insertRate float64 // burn: COPY tasks/s
	rate       float64 // burn or continuous: tasks/s
	p50, p99   float64 // latency, ms
}

var (
	reInsert  = regexp.MustCompile(`^pgfloor insert: .* = ([0-9.]+) tasks/s`)
	reRate    = regexp.MustCompile(`^pgfloor (?:burn|continuous): .* = ([0-9.]+) tasks/s`)
	reLatency = regexp.MustCompile(`^pgfloor latency: .* p50 ([0-9.]+)ms .* p99 ([0-9.]+)ms`)
)

// run runs pgfloor with args against url, echoing its output, under a
// deadline; a pgfloor that overruns it is killed.
func (f *floor) run(ctx context.Context, url string, timeout time.Duration, args ...string) (floorResult, error) {
	var res floorResult
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(rctx, f.bin, args...)
	// The URL goes through the environment, not the command line (ps).
	cmd.Env = append(os.Environ(), "DATABASE_URL="+url)
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	logf("pgfloor %s", strings.Join(args, " "))
	dbBefore, dbOK := dbCPUSeconds()
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start pgfloor: %w", err)
	}
	var found []string
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			logf("  %s", line)
			if m := reInsert.FindStringSubmatch(line); m != nil {
				res.insertRate, _ = strconv.ParseFloat(m[1], 64)
				found = append(found, "insert")
			}
			if m := reRate.FindStringSubmatch(line); m != nil {
				res.rate, _ = strconv.ParseFloat(m[1], 64)
				found = append(found, "rate")
			}
			if m := reLatency.FindStringSubmatch(line); m != nil {
				res.p50, _ = strconv.ParseFloat(m[1], 64)
				res.p99, _ = strconv.ParseFloat(m[2], 64)
				found = append(found, "latency")
			}
		}
		_, _ = io.Copy(io.Discard, out)
	})
	wg.Wait()
	err = cmd.Wait()
	if rctx.Err() != nil && ctx.Err() == nil {
		return res, fmt.Errorf("pgfloor %s did not finish within %v; killed", strings.Join(args, " "), timeout)
	}
	if err != nil {
		return res, fmt.Errorf("pgfloor %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	if len(found) == 0 {
		return res, fmt.Errorf("pgfloor %s printed no result: %s", strings.Join(args, " "), strings.TrimSpace(stderr.String()))
	}
	if dbAfter, ok := dbCPUSeconds(); ok && dbOK {
		var own float64
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			own = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
		}
		logf("  CPU over the whole run (insert included): pgfloor process %.2fs, database %.2fs", own, dbAfter-dbBefore)
	}
	return res, nil
}
