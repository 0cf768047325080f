package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// runProfile runs the receiver (the same packages the binary runs, with the
// binary's settings) inside this process, sends one cell's load to it over
// loopback HTTP and writes a CPU profile of the whole process: the senders
// show up too, under harness.Post. spec is "BATCH,SENDERS,FILE".
func runProfile(spec string, d, warmup time.Duration) error {
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		return fmt.Errorf("-profile %q: want BATCH,SENDERS,FILE", spec)
	}
	batch, err1 := strconv.Atoi(parts[0])
	senders, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || batch < 1 || senders < 1 {
		return fmt.Errorf("-profile %q: BATCH and SENDERS must be positive numbers", spec)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cluster, err := pgtest.StartCluster()
	if err != nil {
		return fmt.Errorf("while starting PostgreSQL: %w", err)
	}
	defer cluster.Destroy()
	u, err := newDB(ctx, cluster.URL(), "profile")
	if err != nil {
		return err
	}
	st, err := store.Open(ctx, u)
	if err != nil {
		return err
	}
	defer st.Close()
	addrs, err := harness.FreeAddrs(2)
	if err != nil {
		return err
	}
	listen, metricsListen := addrs[0], addrs[1]
	srv, err := receiver.New(receiver.Config{
		EHR: harness.EHR, Location: time.UTC, APIKey: harness.APIKey, Secret: []byte(harness.Secret),
		MaxBodyBytes: 4194304, MaxBatchSize: 1000, RequestsPerSecond: 1e6, Burst: 1e6,
		OnInvalid: receiver.Reject, Listen: listen, MetricsListen: metricsListen,
	}, st, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	time.Sleep(200 * time.Millisecond)

	f, err := os.Create(parts[2])
	if err != nil {
		return err
	}
	defer f.Close()
	side := &receiverSide{url: "http://" + listen + "/v2/webhooks/" + harness.EHR + "/sync-appointments",
		client: harness.NewClient(senders)}
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	rec, err := side.run(ctx, harness.NewGen("profile"), batch, senders, warmup, d)
	pprof.StopCPUProfile()
	if err != nil {
		return err
	}
	res := rec.result()
	fmt.Printf("in-process receiver, batch %d, %d senders: %.0f appointments/s, p50 %.2f ms, p99 %.2f ms; profile in %s\n",
		batch, senders, res.appointmentsPerS, harness.Ms(res.p50), harness.Ms(res.p99), parts[2])
	cancel()
	return <-done
}
