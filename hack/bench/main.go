// Command bench is the receiver-versus-limit table of `make bench`
// (docs/performance.md): on one throwaway PostgreSQL and the same generated appointments, for
// each batch size and number of concurrent senders it measures
//
//   - the limit: the same rows written straight into the same schema from
//     Go with the fastest set-based method (see limit.go), no HTTP, no
//     validation, one connection per sender;
//   - the receiver: the real receiver binary (`ehr-receiver receiver`) over loopback
//     HTTP with signed requests (closed loop: each sender sends its next
//     request when the previous one is answered), every entry a new
//     appointment, the rate limit raised out of the way, the operator's
//     default memory limit (256 MiB) as pods get it;
//
// and prints appointments/s, requests/s, p50/p99 latency, the receiver's
// peak RSS and receiver/limit, and writes the cells as JSON. It does so in
// two modes, each on a PostgreSQL of its own: durable (the production
// defaults: fsync, full_page_writes and synchronous_commit on, data and WAL
// on the disk, whose fsync cost pg_test_fsync measures first) and fast
// (fsync and full_page_writes off: statements and round trips only).
//
//	go -C hack run ./bench -binary ../bin/ehr-receiver [-out ../bench-results.json] [-cell 3s] [-modes durable,fast]
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/receiver/sizing"
)

// Cell is one line of the table, as written to the JSON file.
type Cell struct {
	// Durable: taken on a PostgreSQL with fsync, full_page_writes and
	// synchronous_commit on; else with fsync and full_page_writes off.
	Durable          bool    `json:"durable"`
	Batch            int     `json:"batch"`
	Senders          int     `json:"senders"`
	AppointmentsPerS float64 `json:"appointments_per_s"`
	RequestsPerS     float64 `json:"requests_per_s"`
	LimitPerS        float64 `json:"limit_appointments_per_s"`
	LimitMethod      string  `json:"limit_method"`
	Ratio            float64 `json:"ratio"`
	P50Ms            float64 `json:"p50_ms"`
	P99Ms            float64 `json:"p99_ms"`
	PeakRSSMiB       float64 `json:"peak_rss_mib"`
	// Requests answered 200 per transaction committed in the receiver's
	// database over the whole cell: the batcher's mean group size.
	RequestsPerCommit float64 `json:"requests_per_commit"`
	// Where the processor time went, per side (cpu.go).
	CPU      CPU `json:"receiver_cpu"`
	LimitCPU CPU `json:"limit_cpu"`
}

func main() {
	out := envOr("BENCH_OUT", "bench-results.json")
	flag.StringVar(&out, "out", out, "JSON file of the cells (env BENCH_OUT)")
	binary := flag.String("binary", "bin/ehr-receiver", "the binary to run as the receiver (ehr-receiver, or ehr-operator: both have the receiver command)")
	cell := flag.Duration("cell", envDuration("BENCH_CELL", 3*time.Second), "measured time of each side of each cell, in 3 slices (env BENCH_CELL)")
	warmup := flag.Duration("warmup", 300*time.Millisecond, "unmeasured time before each slice")
	batches := flag.String("batches", envOr("BENCH_BATCHES", "1,10,100"), "batch sizes (env BENCH_BATCHES)")
	senders := flag.String("senders", envOr("BENCH_SENDERS", "1,8,32"), "numbers of concurrent senders (env BENCH_SENDERS)")
	modes := flag.String("modes", envOr("BENCH_MODES", "durable,fast"), "PostgreSQL modes to run, in order: durable, fast (env BENCH_MODES)")
	methods := flag.String("limit-methods", "unnest,copy", "limit methods to try; the faster counts")
	flag.StringVar(&dbParams, "receiver-db-params", "", "extra query parameters of the receiver's database URL, for experiments (e.g. plan_cache_mode=force_custom_plan)")
	profile := flag.String("profile", "", "instead of the table: BATCH,SENDERS,FILE runs the receiver in this process under the CPU profiler for one cell and writes the profile to FILE")
	flag.Parse()
	if *profile != "" {
		if err := runProfile(*profile, *cell, *warmup); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	durables, err := parseModes(*modes)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if err := run(*binary, out, *cell, *warmup, durables, ints(*batches), ints(*senders), strings.Split(*methods, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(binary, out string, cell, warmup time.Duration, durables []bool, batches, senders []int, methods []string) error {
	var cells []Cell
	for _, durable := range durables {
		cs, err := runMode(binary, durable, cell, warmup, batches, senders, methods)
		cells = append(cells, cs...)
		if err != nil {
			return err
		}
	}
	printTargets(cells)
	j, err := json.MarshalIndent(cells, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(out, append(j, '\n'), 0o644); err != nil {
		return fmt.Errorf("while writing %s: %w", out, err)
	}
	fmt.Printf("\nWrote %s. Reproduce: BENCH_OUT=%s BENCH_CELL=%s BENCH_BATCHES=%s BENCH_SENDERS=%s BENCH_MODES=%s make bench\n",
		out, out, cell, join(batches), join(senders), modeNames(durables))
	if strings.HasPrefix(binary, os.TempDir()) {
		binary = "bin/ehr-receiver" // bench.sh's temporary build; `make build` makes this one
	}
	// Absolute, since `go -C hack run` runs the tool in hack/.
	absBinary, _ := filepath.Abs(binary)
	absOut, _ := filepath.Abs(out)
	fmt.Printf("  (or: make build && go -C hack run ./bench -binary %s -out %s -cell %s -batches %s -senders %s -modes %s)\n",
		absBinary, absOut, cell, join(batches), join(senders), modeNames(durables))
	return nil
}

// runMode measures every cell on a PostgreSQL of the mode's own, and
// prints the mode's two tables.
func runMode(binary string, durable bool, cell, warmup time.Duration, batches, senders []int, methods []string) ([]Cell, error) {
	fmt.Printf("\n=== %s\n", modeTitle(durable))
	ctx, cluster, done, err := harness.StartMode(binary, durable)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := printMachine(ctx, cluster.URL()); err != nil {
		return nil, err
	}
	if durable {
		if err := printDisk(ctx, cluster); err != nil {
			return nil, err
		}
	}
	postmaster, err := cluster.PostmasterPID()
	if err != nil {
		return nil, err
	}

	var cells []Cell
	fmt.Printf("\n%5s %7s | %12s %9s %8s %8s %9s %8s | %12s %-6s | %6s\n",
		"batch", "senders", "appts/s", "req/s", "p50 ms", "p99 ms", "RSS MiB", "req/tx", "limit appt/s", "method", "ratio")
	for _, b := range batches {
		for _, s := range senders {
			if ctx.Err() != nil {
				return cells, ctx.Err()
			}
			c, err := runCell(ctx, cluster.URL(), postmaster, binary, b, s, cell, warmup, methods)
			if err != nil {
				return cells, fmt.Errorf("%s, batch %d, %d senders: %w", modeName(durable), b, s, err)
			}
			c.Durable = durable
			cells = append(cells, c)
			fmt.Printf("%5d %7d | %12.0f %9.0f %8.2f %8.2f %9.1f %8.1f | %12.0f %-6s | %5.0f%%\n",
				c.Batch, c.Senders, c.AppointmentsPerS, c.RequestsPerS, c.P50Ms, c.P99Ms, c.PeakRSSMiB,
				c.RequestsPerCommit, c.LimitPerS, c.LimitMethod, 100*c.Ratio)
		}
	}
	fmt.Printf("\nCPU milliseconds per 100 appointments, %s (all cores; %d cores here):\n", modeName(durable), runtime.NumCPU())
	fmt.Printf("%5s %7s | %-26s | %-17s\n", "", "", "receiver side", "limit side")
	fmt.Printf("%5s %7s | %8s %8s %8s | %8s %8s\n", "batch", "senders", "postgres", "receiver", "senders", "postgres", "client")
	for _, c := range cells {
		fmt.Printf("%5d %7d | %8.1f %8.1f %8.1f | %8.1f %8.1f\n", c.Batch, c.Senders,
			c.CPU.Postgres, c.CPU.Receiver, c.CPU.Bench, c.LimitCPU.Postgres, c.LimitCPU.Bench)
	}
	return cells, nil
}

func parseModes(s string) ([]bool, error) {
	var out []bool
	for _, f := range strings.Split(s, ",") {
		switch strings.TrimSpace(f) {
		case "durable":
			out = append(out, true)
		case "fast":
			out = append(out, false)
		default:
			return nil, fmt.Errorf("mode %q: want durable or fast", f)
		}
	}
	return out, nil
}

func modeName(durable bool) string {
	if durable {
		return "durable"
	}
	return "fast"
}

func modeNames(durables []bool) string {
	s := make([]string, len(durables))
	for i, d := range durables {
		s[i] = modeName(d)
	}
	return strings.Join(s, ",")
}

func modeTitle(durable bool) string {
	if durable {
		return "Durable: fsync, full_page_writes and synchronous_commit on, data and WAL on the disk"
	}
	return "Fast: fsync and full_page_writes off (statements and round trips, not the disk)"
}

var (
	dbSeq    atomic.Int64
	dbParams string
)

func newDB(ctx context.Context, adminURL, what string) (string, error) {
	return harness.NewDatabase(ctx, adminURL, fmt.Sprintf("bench_%s_%d_%d", what, os.Getpid(), dbSeq.Add(1)))
}

// runCell measures one batch size and number of senders. Each side writes
// into a fresh database of its own. The machine is shared, so its load
// drifts: the sides take turns in rounds slices (limit methods, then the
// receiver, again and again) and each side's figures are summed over its
// slices, so that a busy moment weighs on both.
func runCell(ctx context.Context, adminURL string, postmaster int, binary string, batch, senders int, d, warmup time.Duration, methods []string) (Cell, error) {
	const rounds = 3
	c := Cell{Batch: batch, Senders: senders}
	limitSides := map[string]*limitSide{}
	for _, m := range methods {
		u, err := newDB(ctx, adminURL, "limit")
		if err != nil {
			return c, err
		}
		l, err := openLimit(ctx, u, m, senders)
		if err != nil {
			return c, err
		}
		defer l.close()
		limitSides[m] = l
	}
	u, err := newDB(ctx, adminURL, "receiver")
	if err != nil {
		return c, err
	}
	if dbParams != "" {
		u += "&" + dbParams
	}
	// The memory limit the operator gives a receiver container by default,
	// as pods pass it (MEMORY_LIMIT): it sets the Go memory limit, and with
	// it the receiver's GC target.
	r, err := harness.StartReceiver(binary, u, "--memory-limit", strconv.Itoa(sizing.DefaultMemoryLimit))
	if err != nil {
		return c, err
	}
	defer func() { _ = r.Stop() }() // best effort: the figures are already printed
	side := &receiverSide{r: r, url: r.URL, client: harness.NewClient(senders),
		meter: &cpuMeter{postmaster: postmaster, receiver: r.Cmd.Process.Pid}}
	limitMeters := map[string]*cpuMeter{}
	for _, m := range methods {
		limitMeters[m] = &cpuMeter{postmaster: postmaster}
	}

	if side.commits0, err = commits(ctx, u); err != nil {
		return c, err
	}
	limits := map[string]*recorder{}
	var rcv *recorder
	for round := range rounds {
		gen := harness.NewGen(fmt.Sprintf("b%ds%dr%d", batch, senders, round))
		for _, m := range methods {
			rec, err := limitSides[m].run(ctx, gen, batch, warmup, d/rounds, limitMeters[m])
			if err != nil {
				return c, err
			}
			limits[m] = limits[m].merge(rec)
		}
		rec, err := side.run(ctx, gen, batch, senders, warmup, d/rounds)
		if err != nil {
			return c, err
		}
		rcv = rcv.merge(rec)
	}
	for _, m := range methods {
		if res := limits[m].result(); res.appointmentsPerS > c.LimitPerS {
			c.LimitPerS, c.LimitMethod = res.appointmentsPerS, m
			c.LimitCPU = limitMeters[m].per100(res.appointmentsPerS * limits[m].secs)
		}
	}
	rss, perCommit, err := side.finish(ctx, u)
	if err != nil {
		return c, err
	}
	c.RequestsPerCommit = perCommit
	res := rcv.result()
	c.CPU = side.meter.per100(res.appointmentsPerS * rcv.secs)
	c.AppointmentsPerS, c.RequestsPerS = res.appointmentsPerS, res.requestsPerS
	c.P50Ms, c.P99Ms, c.PeakRSSMiB = harness.Ms(res.p50), harness.Ms(res.p99), rss
	if c.LimitPerS > 0 {
		c.Ratio = c.AppointmentsPerS / c.LimitPerS
	}
	return c, nil
}

// receiverSide is one receiver process serving a cell's slices.
type receiverSide struct {
	r      *harness.Receiver // nil when the receiver runs in this process (-profile)
	url    string
	client *http.Client
	ok     atomic.Int64 // appointments answered 200
	reqs   atomic.Int64 // requests answered 200
	// commits0 is the database's committed transactions before the first
	// request (migrations, the receiver's start).
	commits0 int64
	meter    *cpuMeter // nil in -profile
}

// run sends gen's batches from senders goroutines (closed loop) for
// warmup+d and records the window after warmup. Any answer but 200 fails.
func (rs *receiverSide) run(ctx context.Context, gen harness.Gen, batch, senders int, warmup, d time.Duration) (*recorder, error) {
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		mu    sync.Mutex
		fails []string
		rec   = newRecorder(senders)
	)
	start := time.Now()
	rec.window(start.Add(warmup), start.Add(warmup+d))
	wait := rs.meter.watch(rec.begin, rec.end)
	for s := range senders {
		wg.Go(func() {
			for time.Now().Before(rec.end) && ctx.Err() == nil {
				seq := next.Add(1)
				body := gen.Body((seq-1)*int64(batch), batch)
				t0 := time.Now()
				a := harness.Post(ctx, rs.client, rs.url, body, "")
				if a.Err != nil || a.Status != 200 {
					mu.Lock()
					if len(fails) < 5 {
						fails = append(fails, fmt.Sprintf("status %d, error %v, body %.200s", a.Status, a.Err, a.Body))
					}
					mu.Unlock()
					return
				}
				rec.add(s, t0, time.Now(), batch)
				rs.ok.Add(int64(batch))
				rs.reqs.Add(1)
			}
		})
	}
	wg.Wait()
	wait()
	if len(fails) > 0 {
		log := ""
		if rs.r != nil {
			log = "\nits log:\n" + rs.r.LogTail()
		}
		return nil, fmt.Errorf("the receiver failed requests: %s%s", strings.Join(fails, "; "), log)
	}
	return rec, nil
}

// finish reads the receiver's peak RSS, stops it, checks that every
// appointment answered 200 is in the database, and counts the requests
// answered 200 per transaction committed in its database (a backend's
// statistics reach pg_stat_database when its session ends, so after Stop).
func (rs *receiverSide) finish(ctx context.Context, dbURL string) (rss, perCommit float64, err error) {
	rss, err = harness.ProcStatus(rs.r.Cmd.Process.Pid, "VmHWM")
	if err != nil {
		return 0, 0, err
	}
	if err := rs.r.Stop(); err != nil {
		return 0, 0, fmt.Errorf("the receiver did not exit cleanly: %w", err)
	}
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		return 0, 0, err
	}
	defer db.Close()
	var n int64
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM appointments`).Scan(&n); err != nil {
		return 0, 0, err
	}
	if n != rs.ok.Load() {
		return 0, 0, fmt.Errorf("%d appointments answered 200 but %d in the database", rs.ok.Load(), n)
	}
	c, err := commits(ctx, dbURL)
	if err != nil {
		return 0, 0, err
	}
	if c > rs.commits0 {
		perCommit = float64(rs.reqs.Load()) / float64(c-rs.commits0)
	}
	return rss, perCommit, nil
}

// commits is the number of transactions committed in the database of
// dbURL, as far as the sessions that ended have reported them.
func commits(ctx context.Context, dbURL string) (int64, error) {
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var n int64
	err = db.QueryRowContext(ctx, `SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()`).Scan(&n)
	return n, err
}

// measure is one side of a cell.
type measure struct {
	appointmentsPerS, requestsPerS float64
	p50, p99                       time.Duration
}

// recorder keeps what completed inside the measured window, per sender
// (no shared lock on the hot path).
type recorder struct {
	begin, end time.Time
	lat        [][]time.Duration
	appts      []int
	secs       float64 // measured time of the recorders merged into this one
}

func newRecorder(senders int) *recorder {
	return &recorder{lat: make([][]time.Duration, senders), appts: make([]int, senders)}
}

func (r *recorder) window(begin, end time.Time) {
	r.begin, r.end, r.secs = begin, end, end.Sub(begin).Seconds()
}

func (r *recorder) add(sender int, t0, t1 time.Time, appointments int) {
	if t1.Before(r.begin) || t1.After(r.end) {
		return
	}
	r.lat[sender] = append(r.lat[sender], t1.Sub(t0))
	r.appts[sender] += appointments
}

// merge adds o's slices to r (nil r: o).
func (r *recorder) merge(o *recorder) *recorder {
	if r == nil {
		return o
	}
	r.lat = append(r.lat, o.lat...)
	r.appts = append(r.appts, o.appts...)
	r.secs += o.secs
	return r
}

func (r *recorder) result() measure {
	var all []time.Duration
	appts := 0
	for i := range r.lat {
		all = append(all, r.lat[i]...)
		appts += r.appts[i]
	}
	return measure{
		appointmentsPerS: float64(appts) / r.secs, requestsPerS: float64(len(all)) / r.secs,
		p50: harness.Percentile(all, 50), p99: harness.Percentile(all, 99),
	}
}

// printMachine prints what the figures depend on: cores, CPU, memory and
// the PostgreSQL version and settings.
func printMachine(ctx context.Context, adminURL string) error {
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := "unknown"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0]); len(f) >= 2 {
			if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
				mem = fmt.Sprintf("%.1f GiB", kb/1024/1024)
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	fmt.Printf("Machine: %d cores (GOMAXPROCS %d), %s, %s memory, load average %s\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), cpu, mem, load)
	db, err := sql.Open("postgres", adminURL)
	if err != nil {
		return err
	}
	defer db.Close()
	var settings []string
	for _, name := range []string{"server_version", "fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "max_connections"} {
		var v string
		if err := db.QueryRowContext(ctx, "SHOW "+name).Scan(&v); err != nil {
			return fmt.Errorf("while reading PostgreSQL setting %s: %w", name, err)
		}
		settings = append(settings, name+"="+v)
	}
	fmt.Printf("PostgreSQL (throwaway, loopback): %s\n", strings.Join(settings, " "))
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "bench: %q is not a positive number\n", f)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}

func join(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
