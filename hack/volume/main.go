// Command volume measures the real receiver's writes against a database
// already loaded to a year's volume (hack/volume/load.sql; docs/performance.md,
// "At a year's volume"): it starts `ehr-receiver receiver` for EHR "bench"
// on -db and sends signed batches from closed-loop senders, then prints
// appointments/s, requests/s and p50/p99 latency.
//
// -mode picks the entries: new (appointments the database never saw, from
// -first on), update (random appointments below -existing, each a new
// version: an appointment update and a history row) or duplicate (the same
// appointments sent again: the history probe finds them, nothing written).
//
//	go -C hack run ./volume -binary /tmp/ehr-receiver -db postgres://… -mode update -existing 1000000
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
)

func main() {
	binary := flag.String("binary", "bin/ehr-receiver", "the receiver binary")
	db := flag.String("db", "", "URL of the loaded database")
	mode := flag.String("mode", "new", "new, update or duplicate")
	tag := flag.String("tag", "x7f3k9", "the generator's tag: ids apt-<tag>-<n>, as load.sql makes them")
	first := flag.Int64("first", 1<<40, "first entry of -mode new (past any loaded one)")
	existing := flag.Int64("existing", 0, "entries 0 … existing-1 are loaded (-mode update, duplicate)")
	batch := flag.Int("batch", 10, "entries per request")
	senders := flag.Int("senders", 8, "concurrent senders")
	d := flag.Duration("duration", 20*time.Second, "measured time")
	every := flag.Duration("every", 0, "also print p50/p99 of each interval this long (0: only the total)")
	extra := flag.String("receiver-flags", "", "more flags of the receiver, space-separated (e.g. --retain-history 1440h); its retention lines are printed at the end")
	flag.Parse()
	if err := run(*binary, *db, *mode, *tag, *first, *existing, *batch, *senders, *d, *every, strings.Fields(*extra)); err != nil {
		fmt.Fprintln(os.Stderr, "volume:", err)
		os.Exit(1)
	}
}

func run(binary, db, mode, tag string, first, existing int64, batch, senders int, d, every time.Duration, extra []string) error {
	if (mode == "update" || mode == "duplicate") && existing < int64(batch) {
		return fmt.Errorf("-mode %s needs -existing", mode)
	}
	r, err := harness.StartReceiver(binary, db, extra...)
	if err != nil {
		return err
	}
	defer func() {
		_ = r.Stop()
		for _, l := range strings.Split(r.Log(), "\n") {
			if strings.Contains(l, "Retention") {
				fmt.Println(l)
			}
		}
	}()
	gen := harness.NewGen(tag)
	// update: the generator's content differs from every loaded version;
	// duplicate: a range sent once unmeasured, then again.
	if mode == "duplicate" {
		existing = 20000
	}
	client := harness.NewClient(senders)
	ctx := context.Background()
	var (
		next     atomic.Int64
		mu       sync.Mutex
		lat      []time.Duration
		tick     []time.Duration
		failures atomic.Int64
		wg       sync.WaitGroup
	)
	body := func(rng *rand.Rand) []byte {
		switch mode {
		case "new":
			return gen.Body(first+(next.Add(1)-1)*int64(batch), batch)
		default:
			b := make([]byte, 0, 64+batch*720)
			b = append(b, `{"appointments":[`...)
			for i := range batch {
				if i > 0 {
					b = append(b, ',')
				}
				b = gen.AppendEntry(b, rng.Int64N(existing))
			}
			return append(b, "]}"...)
		}
	}
	if mode == "duplicate" {
		for n := int64(0); n < existing; n += 100 {
			if a := harness.Post(ctx, client, r.URL, gen.Body(n, 100), ""); a.Status != 200 {
				return fmt.Errorf("priming: status %d %v", a.Status, a.Err)
			}
		}
	}
	start := time.Now()
	end := start.Add(d)
	for s := range senders {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(s), uint64(start.UnixNano())))
			var mine []time.Duration
			for time.Now().Before(end) {
				b := body(rng)
				t0 := time.Now()
				a := harness.Post(ctx, client, r.URL, b, "")
				if a.Err != nil || a.Status != 200 {
					failures.Add(1)
					continue
				}
				mine = append(mine, time.Since(t0))
				if every > 0 {
					mu.Lock()
					tick = append(tick, time.Since(t0))
					mu.Unlock()
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	if every > 0 {
		go func() {
			for t := time.NewTicker(every); time.Now().Before(end); <-t.C {
				mu.Lock()
				if len(tick) > 0 {
					fmt.Printf("%s  %d requests  p50 %.1f ms  p99 %.1f ms  max %.1f ms\n", time.Now().UTC().Format("15:04:05"), len(tick),
						harness.Ms(harness.Percentile(tick, 50)), harness.Ms(harness.Percentile(tick, 99)), harness.Ms(harness.Percentile(tick, 100)))
				}
				tick = tick[:0]
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	fmt.Printf("mode %s batch %d senders %d: %.0f appointments/s, %.0f requests/s, p50 %.1f ms, p99 %.1f ms, %d requests, %d failed\n",
		mode, batch, senders, float64(len(lat)*batch)/el, float64(len(lat))/el,
		harness.Ms(harness.Percentile(lat, 50)), harness.Ms(harness.Percentile(lat, 99)), len(lat), failures.Load())
	return nil
}
