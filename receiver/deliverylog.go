package receiver

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/insighthealth/ehr-operator/receiver/payload"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// The delivery log of failed requests: a bounded queue and one writer that
// writes what has gathered in one statement. A full queue or a failed write
// drops records (counted), so a flood of rejected requests costs the
// database a few writes a second and never delays an answer.
const (
	deliveryQueueSize = 4096
	deliveryBatchMax  = 512
	// deliveryErrorsBudget bounds the field errors the queue holds, as
	// errorsCost counts them: a record that would pass it is queued
	// without its errors, keeping their count (its row then says the
	// answer listed some, none kept). A record holds at most
	// store.MaxFieldErrors, so a full queue of them would be 4,096 × 10
	// errors; a queue is that deep only while the database holds the
	// writer (a flood during an outage), and then 1 MiB keeps the errors of
	// a few hundred requests. The queue's slots take 608 KiB besides (152
	// bytes a record, 32 of them for the errors; docs/decisions.md, "A
	// refused delivery keeps its first field errors").
	deliveryErrorsBudget = 1 << 20
	// deliveryGather is how long the writer gathers records after the
	// first before it writes: a flood is at most 1/deliveryGather writes a
	// second plus one per deliveryBatchMax records.
	deliveryGather       = 100 * time.Millisecond
	deliveryWriteTimeout = 2 * time.Second
	// deliveryFlushTimeout bounds the last writes at shutdown.
	deliveryFlushTimeout = 5 * time.Second
	// deliveryDropLogEvery spaces the warnings about dropped records, so
	// that a flood during an outage is a line every 10 s, not one per
	// request (220,000 lines a minute were measured).
	deliveryDropLogEvery = 10 * time.Second
)

type deliveryLog struct {
	write   func(context.Context, []store.Delivery) error
	log     *slog.Logger
	queue   chan store.Delivery
	flushes chan chan struct{}
	stop    chan struct{}
	done    chan struct{}
	// final bounds the writes after stop.
	final     context.Context
	closeOnce sync.Once

	written, batches, droppedFull, droppedDatabase prometheus.Counter
	// errorsLeftOut counts records queued without their field errors
	// (deliveryErrorsBudget): their rows say "none kept".
	errorsLeftOut prometheus.Counter
	// fullWarn and databaseWarn log the drops, a line per
	// deliveryDropLogEvery at most.
	fullWarn, databaseWarn *dropWarning
	// errorBytes is errorsCost of the field errors queued or being
	// written, at most deliveryErrorsBudget.
	errorBytes atomic.Int64
}

func newDeliveryLog(write func(context.Context, []store.Delivery) error, log *slog.Logger,
	ehr string, reg prometheus.Registerer) *deliveryLog {
	labels := prometheus.Labels{"ehr": ehr}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ehr_receiver", Name: name, Help: help, ConstLabels: labels})
	}
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ehr_receiver", Name: "delivery_log_dropped_total", ConstLabels: labels,
		Help: "Failed-request records not written to webhook_deliveries: the queue was full, or the database failed the write.",
	}, []string{"reason"})
	l := &deliveryLog{
		write: write, log: log,
		queue:   make(chan store.Delivery, deliveryQueueSize),
		flushes: make(chan chan struct{}),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		final:   context.Background(),

		written:         counter("delivery_log_written_total", "Failed-request records written to webhook_deliveries."),
		batches:         counter("delivery_log_batches_total", "Statements that wrote failed-request records (one per batch)."),
		droppedFull:     dropped.WithLabelValues("full"),
		droppedDatabase: dropped.WithLabelValues("database"),
		errorsLeftOut: counter("delivery_log_errors_left_out_total",
			"Refused requests recorded without their field errors, the queue holding its budget of them already (the row keeps their count)."),
	}
	l.fullWarn = newDropWarning(deliveryDropLogEvery, func(n int64, _ string) {
		log.Warn("Delivery log queue full; failed-request records dropped", "dropped", n)
	})
	l.databaseWarn = newDropWarning(deliveryDropLogEvery, func(n int64, cause string) {
		log.Warn("Could not record failed deliveries; records dropped", "dropped", n, "error", cause)
	})
	reg.MustRegister(l.written, l.batches, dropped, l.errorsLeftOut)
	go l.run()
	return l
}

// add queues d without waiting: a full queue drops it. Its field errors
// are left out when the queue holds deliveryErrorsBudget of them already.
func (l *deliveryLog) add(d store.Delivery) {
	cost := errorsCost(d.FieldErrors)
	if cost > 0 && l.errorBytes.Add(cost) > deliveryErrorsBudget {
		l.errorBytes.Add(-cost)
		d.FieldErrors, cost = nil, 0
		l.errorsLeftOut.Inc()
	}
	select {
	case l.queue <- d:
		return
	default:
	}
	l.errorBytes.Add(-cost)
	l.droppedFull.Inc()
	l.fullWarn.add(1, "")
}

// flush writes everything queued before it was called, for tests.
func (l *deliveryLog) flush(ctx context.Context) {
	ack := make(chan struct{})
	select {
	case l.flushes <- ack:
	case <-l.done:
		return
	case <-ctx.Done():
		return
	}
	select {
	case <-ack:
	case <-ctx.Done():
	}
}

// close writes what is queued, for at most timeout, and stops the writer.
// Records added later stay unwritten. It waits for the writer at most a
// second past timeout, and reports whether it ended: a write stuck in
// lib/pq's read from a database that does not answer ignores the deadline
// (see backgroundStopTimeout), and is left to the process's exit.
func (l *deliveryLog) close(timeout time.Duration) (ended bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	l.closeOnce.Do(func() {
		l.final = ctx // read by run only after stop is closed
		close(l.stop)
	})
	t := time.NewTimer(timeout + time.Second)
	defer t.Stop()
	defer l.fullWarn.flush()
	defer l.databaseWarn.flush()
	select {
	case <-l.done:
		return true
	case <-t.C:
		return false
	}
}

func (l *deliveryLog) run() {
	defer close(l.done)
	batch := make([]store.Delivery, 0, deliveryBatchMax)
	for {
		select {
		case d := <-l.queue:
			var (
				ack  chan struct{}
				stop bool
			)
			batch, ack, stop = l.gather(append(batch[:0], d))
			l.writeBatch(context.Background(), batch)
			switch {
			case stop:
				l.writeQueued(l.final)
				return
			case ack != nil:
				l.writeQueued(context.Background())
				close(ack)
			}
		case ack := <-l.flushes:
			l.writeQueued(context.Background())
			close(ack)
		case <-l.stop:
			l.writeQueued(l.final)
			return
		}
	}
}

// gather adds queued records to batch until it is full or deliveryGather
// has passed, or a flush (ack) or close (stop) cuts it short.
func (l *deliveryLog) gather(batch []store.Delivery) (_ []store.Delivery, ack chan struct{}, stop bool) {
	timer := time.NewTimer(deliveryGather)
	defer timer.Stop()
	for len(batch) < deliveryBatchMax {
		select {
		case d := <-l.queue:
			batch = append(batch, d)
		case <-timer.C:
			return batch, nil, false
		case ack = <-l.flushes:
			return batch, ack, false
		case <-l.stop:
			return batch, nil, true
		}
	}
	return batch, nil, false
}

// writeQueued writes what is queued now, a batch at a time; once ctx is done
// the rest is dropped.
func (l *deliveryLog) writeQueued(ctx context.Context) {
	batch := make([]store.Delivery, 0, deliveryBatchMax)
	for {
		batch = batch[:0]
	drain:
		for len(batch) < deliveryBatchMax {
			select {
			case d := <-l.queue:
				batch = append(batch, d)
			default:
				break drain
			}
		}
		if len(batch) == 0 {
			return
		}
		l.writeBatch(ctx, batch)
	}
}

// errorsCost is what a record's field errors may hold of the heap, counted
// high: the slice, and each string as if it were an allocation of its own
// (most messages are constants that every error with them shares), each
// rounded up to a multiple of 64 bytes, more than Go's size classes round
// an allocation of their sizes (payload's paths and messages are under
// 300 bytes).
func errorsCost(errs []payload.FieldError) int64 {
	if len(errs) == 0 {
		return 0
	}
	n := roundUp64(len(errs) * int(unsafe.Sizeof(payload.FieldError{})))
	for _, e := range errs {
		n += roundUp64(len(e.Field)) + roundUp64(len(e.Message))
	}
	return int64(n)
}

func roundUp64(n int) int { return (n + 63) &^ 63 }

// writeBatch writes batch, then gives its field errors' share of the
// budget back and clears it, so that the writer's reused slice does not
// keep them.
func (l *deliveryLog) writeBatch(parent context.Context, batch []store.Delivery) {
	defer func() {
		var cost int64
		for i := range batch {
			cost += errorsCost(batch[i].FieldErrors)
		}
		l.errorBytes.Add(-cost)
		clear(batch)
	}()
	var err error
	if err = parent.Err(); err == nil {
		ctx, cancel := context.WithTimeout(parent, deliveryWriteTimeout)
		err = l.write(ctx, batch)
		cancel()
	}
	if err == nil {
		l.batches.Inc()
		l.written.Add(float64(len(batch)))
		return
	}
	l.droppedDatabase.Add(float64(len(batch)))
	l.databaseWarn.add(int64(len(batch)), err.Error())
}

// dropWarning logs drops at most once per every: the first at once, the
// ones after it within every together in one line when every has passed,
// so no drop goes unreported and a flood is a line per every. The metrics
// count each drop as it happens.
type dropWarning struct {
	every time.Duration
	log   func(n int64, cause string)

	mu      sync.Mutex
	pending int64
	cause   string // the last drop's
	last    time.Time
	timer   *time.Timer // set while a line is due
}

func newDropWarning(every time.Duration, log func(n int64, cause string)) *dropWarning {
	return &dropWarning{every: every, log: log}
}

// add counts n records dropped for cause.
func (w *dropWarning) add(n int64, cause string) {
	w.mu.Lock()
	w.pending += n
	w.cause = cause
	if w.timer != nil {
		w.mu.Unlock()
		return
	}
	if wait := w.every - time.Since(w.last); wait > 0 {
		w.timer = time.AfterFunc(wait, w.flush)
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	w.flush()
}

// flush logs the drops not logged yet, if any.
func (w *dropWarning) flush() {
	w.mu.Lock()
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	n, cause := w.pending, w.cause
	w.pending = 0
	if n > 0 {
		w.last = time.Now()
	}
	w.mu.Unlock()
	if n > 0 {
		w.log(n, cause)
	}
}
