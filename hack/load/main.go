// Command load is `make load`: sustained mixed load (vegeta as a library)
// against the real receiver binary (`ehr-receiver receiver`) on a throwaway PostgreSQL,
// over loopback. It prints appointments/s, requests/s, p50/p99 latency,
// the receiver's RSS and the count of non-2xx answers every few seconds and
// at the end, checks that every appointment answered 200 is in the
// database, and exits 1 when any answer was not 2xx (the rate is meant to
// stay under the receiver's configured limit) or a row is missing.
//
//	LOAD_DURATION=60s LOAD_RATE=100 go -C hack run ./load -binary ../bin/ehr-receiver
package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/receiver/sizing"
)

func main() {
	binary := flag.String("binary", "bin/ehr-receiver", "the binary to run as the receiver (ehr-receiver, or ehr-operator: both have the receiver command)")
	duration := flag.Duration("duration", envDuration("LOAD_DURATION", 60*time.Second), "how long to send (env LOAD_DURATION)")
	rate := flag.Int("rate", envInt("LOAD_RATE", 100), "requests per second (env LOAD_RATE)")
	limit := flag.Int("limit", envInt("LOAD_LIMIT", 0), "the receiver's --requests-per-second and --burst (env LOAD_LIMIT; default 1.5 × rate)")
	mix := flag.String("mix", envOr("LOAD_MIX", "1:70,10:25,100:5"), "batch sizes and their weights, size:weight,… (env LOAD_MIX)")
	every := flag.Duration("every", envDuration("LOAD_EVERY", 5*time.Second), "report interval (env LOAD_EVERY)")
	flag.Parse()
	if *limit == 0 {
		*limit = max(*rate*3/2, 1)
	}
	sizes, err := parseMix(*mix)
	if err == nil {
		err = run(*binary, *duration, *rate, *limit, sizes, *every, *mix)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

func run(binary string, duration time.Duration, rate, limit int, sizes []int, every time.Duration, mix string) error {
	ctx, cluster, done, err := harness.Start(binary)
	if err != nil {
		return err
	}
	defer done()
	dbURL, err := harness.NewDatabase(ctx, cluster.URL(), fmt.Sprintf("load_%d", os.Getpid()))
	if err != nil {
		return err
	}
	// --memory-limit: the operator's default for a receiver container, as
	// pods pass it (MEMORY_LIMIT).
	r, err := harness.StartReceiver(binary, dbURL, "--requests-per-second", strconv.Itoa(limit), "--burst", strconv.Itoa(limit),
		"--memory-limit", strconv.Itoa(sizing.DefaultMemoryLimit))
	if err != nil {
		return err
	}
	defer func() { _ = r.Stop() }() // best effort: the figures are already printed
	pid := r.Cmd.Process.Pid
	fmt.Printf("Receiver pid %d, limit %d requests/s; sending %d requests/s for %s, batch sizes %s (size:weight)\n\n",
		pid, limit, rate, duration, mix)

	gen := harness.NewGen("load")
	var seq, nextEntry atomic.Int64
	// The batch size travels in X-Request-ID, which the receiver echoes,
	// so each result says how many appointments it carried.
	targeter := func(t *vegeta.Target) error {
		n := seq.Add(1)
		size := sizes[int(n)%len(sizes)]
		first := nextEntry.Add(int64(size)) - int64(size)
		body := gen.Body(first, size)
		t.Method, t.URL, t.Body = http.MethodPost, r.URL, body
		t.Header = http.Header{}
		req := &http.Request{Header: t.Header}
		harness.SignRequest(req, body)
		t.Header.Set("X-Request-ID", fmt.Sprintf("load-%d-b%d", n, size))
		return nil
	}
	attacker := vegeta.NewAttacker(vegeta.KeepAlive(true), vegeta.Workers(8), vegeta.MaxWorkers(512),
		vegeta.Timeout(30*time.Second), vegeta.MaxBody(4096))
	results := attacker.Attack(targeter, vegeta.Rate{Freq: rate, Per: time.Second}, duration, "load")
	go func() { <-ctx.Done(); attacker.Stop() }()

	fmt.Printf("%8s | %9s %9s %8s %8s | %8s %8s | %s\n", "t", "req/s", "appts/s", "p50 ms", "p99 ms", "RSS MiB", "peak MiB", "non-2xx so far")
	var (
		total, interval      vegeta.Metrics
		okAppts, intervalAps int64
		non2xx               = map[string]int{}
		nNon2xx              int
		start                = time.Now()
		last                 = start
		tick                 = time.NewTicker(every)
	)
	defer tick.Stop()
	report := func(now time.Time) {
		interval.Close()
		rss, _ := harness.ProcStatus(pid, "VmRSS")
		hwm, _ := harness.ProcStatus(pid, "VmHWM")
		secs := now.Sub(last).Seconds()
		fmt.Printf("%7.0fs | %9.1f %9.1f %8.2f %8.2f | %8.1f %8.1f | %d\n", now.Sub(start).Seconds(),
			float64(interval.Requests)/secs, float64(intervalAps)/secs,
			harness.Ms(interval.Latencies.P50), harness.Ms(interval.Latencies.P99), rss, hwm, nNon2xx)
		interval, intervalAps, last = vegeta.Metrics{}, 0, now
	}
loop:
	for {
		select {
		case res, ok := <-results:
			if !ok {
				break loop
			}
			total.Add(res)
			interval.Add(res)
			if res.Code >= 200 && res.Code < 300 {
				n := batchOf(res)
				okAppts += n
				intervalAps += n
			} else {
				nNon2xx++
				key := strconv.Itoa(int(res.Code))
				if res.Code == 0 {
					key = "transport error"
				}
				non2xx[key]++
			}
		case now := <-tick.C:
			report(now)
		}
	}
	if time.Since(last) > every/5 {
		report(time.Now())
	}
	total.Close()
	hwm, err := harness.ProcStatus(pid, "VmHWM")
	if err != nil {
		return err
	}
	if err := r.Stop(); err != nil {
		return fmt.Errorf("the receiver did not exit cleanly: %w", err)
	}
	var stored int64
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.QueryRowContext(context.Background(), `SELECT count(*) FROM appointments`).Scan(&stored); err != nil {
		return fmt.Errorf("while counting the stored appointments: %w", err)
	}
	secs := total.Duration.Seconds()
	fmt.Printf("\nTotal: %d requests in %s (%.1f/s sent), %d appointments answered 200 (%.1f/s), %d in the database\n",
		total.Requests, total.Duration.Round(time.Millisecond), total.Rate, okAppts, float64(okAppts)/secs, stored)
	fmt.Printf("Latency: p50 %.2f ms, p99 %.2f ms, max %.2f ms; receiver peak RSS %.1f MiB\n",
		harness.Ms(total.Latencies.P50), harness.Ms(total.Latencies.P99), harness.Ms(total.Latencies.Max), hwm)
	fmt.Printf("Non-2xx answers: %d %v\n", nNon2xx, non2xx)
	if len(total.Errors) > 0 {
		fmt.Printf("Errors: %s\n", strings.Join(first(total.Errors, 5), "; "))
	}
	fmt.Printf("Reproduce: LOAD_DURATION=%s LOAD_RATE=%d LOAD_LIMIT=%d LOAD_MIX=%s make load\n", duration, rate, limit, mix)
	switch {
	case nNon2xx > 0:
		return fmt.Errorf("%d answers were not 2xx", nNon2xx)
	case stored != okAppts:
		return fmt.Errorf("%d appointments answered 200 but %d in the database", okAppts, stored)
	}
	return nil
}

// batchOf reads the batch size back from the echoed X-Request-ID.
func batchOf(res *vegeta.Result) int64 {
	id := res.Headers.Get("X-Request-ID")
	i := strings.LastIndex(id, "-b")
	if i < 0 {
		return 0
	}
	n, _ := strconv.ParseInt(id[i+2:], 10, 64)
	return n
}

// parseMix turns "1:70,10:25,100:5" into a cycle of 100 batch sizes in
// those proportions, spread out rather than in runs.
func parseMix(s string) ([]int, error) {
	type w struct{ size, weight int }
	var ws []w
	sum := 0
	for _, f := range strings.Split(s, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(f), ":")
		size, err1 := strconv.Atoi(a)
		weight, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil || size < 1 || weight < 1 {
			return nil, fmt.Errorf("mix %q: want size:weight,… with positive numbers", s)
		}
		ws = append(ws, w{size, weight})
		sum += weight
	}
	// Largest remainder spreading: each slot takes the size furthest behind its share.
	out := make([]int, 0, sum)
	got := make([]int, len(ws))
	for k := 1; k <= sum; k++ {
		best := 0
		for i := range ws {
			if float64(ws[i].weight*k)/float64(sum)-float64(got[i]) > float64(ws[best].weight*k)/float64(sum)-float64(got[best]) {
				best = i
			}
		}
		got[best]++
		out = append(out, ws[best].size)
	}
	return out, nil
}

func first(s []string, n int) []string { return s[:min(n, len(s))] }

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}
