package cmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/insighthealth/ehr-operator/receiver"
	"github.com/insighthealth/ehr-operator/receiver/replay"
	"github.com/insighthealth/ehr-operator/receiver/store"
	"github.com/insighthealth/ehr-operator/receiver/store/migrations"
)

// deliveriesFlags are the flags every deliveries subcommand shares.
type deliveriesFlags struct {
	databaseURL        *secretFlag
	output             string
	ehr, requestID     string
	outcome            string
	since, until       string
	limit              int
	includePatientData bool
	timeZone           string
	dryRun             bool
	timeout            time.Duration
	now                func() time.Time // the clock of --since 24h and of a replay
}

func newDeliveriesCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "deliveries",
		Short: "Inspect the delivery log and replay quarantined entries",
		Long: `Inspect what EHRs sent (webhook_deliveries and quarantined_entries) and
replay quarantined entries that are valid now.

Output is a table, or JSON with -o json. Nothing printed is patient data
unless --include-patient-data is given. Every flag but that one falls back
to an environment variable named after it (--database-url → DATABASE_URL).`,
	}
	c.AddCommand(newDeliveriesListCommand(), newDeliveriesShowCommand(), newDeliveriesReplayCommand())
	return c
}

// addCommon registers the database, output and filter flags; timeout is
// --timeout's default.
func (f *deliveriesFlags) addCommon(fs *pflag.FlagSet, timeout time.Duration) {
	f.databaseURL = addSecretFlag(fs, "database-url", "postgres:// URL of the appointments database", "the database URL")
	fs.StringVarP(&f.output, "output", "o", "table", "table or json")
	fs.StringVar(&f.ehr, "ehr", "", "only this EHR")
	fs.StringVar(&f.requestID, "request-id", "", "only the deliveries with this request id (X-Request-ID)")
	fs.StringVar(&f.outcome, "outcome", "", "only this outcome (stored, quarantined, rejected, unavailable, replayed, …)")
	fs.StringVar(&f.since, "since", "", "only deliveries received at or after this time: RFC 3339, or a duration ago (24h)")
	fs.StringVar(&f.until, "until", "", "only deliveries received before this time: RFC 3339, or a duration ago")
	fs.DurationVar(&f.timeout, "timeout", timeout, "give up after this long")
}

func newDeliveriesListCommand() *cobra.Command {
	var f deliveriesFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List deliveries, newest first, with their quarantined entries' counts",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return f.run(c, func(ctx context.Context, st *store.Store, filter store.DeliveryFilter) error {
				filter.Limit = f.limit
				p := f.listPrinter(c.OutOrStdout())
				n := 0
				err := st.EachDelivery(ctx, filter, func(d store.DeliveryRecord) error {
					n++
					return p.delivery(d)
				})
				if err := finish(p, n > 0, err); err != nil {
					return err
				}
				f.noteLimit(c.ErrOrStderr(), n)
				return nil
			})
		},
	}
	f.addCommon(c.Flags(), time.Minute)
	c.Flags().IntVar(&f.limit, "limit", 100, "at most this many deliveries (0: all)")
	return c
}

func newDeliveriesShowCommand() *cobra.Command {
	var f deliveriesFlags
	c := &cobra.Command{
		Use:   "show [DELIVERY-ID...]",
		Short: "Show deliveries, a refused one's field errors, and their quarantined entries: errors, replay; the entries themselves with --include-patient-data",
		Long: `Show deliveries, chosen by id, --request-id, --since or --until (at least
one; --ehr and --outcome narrow them), with a refused request's field
errors (outcome rejected or invalid_body: the first 10 its answer listed,
and how many it listed) and each quarantined entry's field errors and
replay state. Field errors name fields and rules, never a value. The
entries as sent are patient data: they are printed only with
--include-patient-data.`,
		RunE: func(c *cobra.Command, args []string) error {
			return f.run(c, func(ctx context.Context, st *store.Store, filter store.DeliveryFilter) error {
				for _, a := range args {
					id, err := strconv.ParseInt(a, 10, 64)
					if err != nil || id < 1 {
						return fmt.Errorf("%q is not a delivery id (a positive number; use --request-id for a request id)", a)
					}
					filter.IDs = append(filter.IDs, id)
				}
				if len(filter.IDs) == 0 && filter.RequestID == "" && filter.Since.IsZero() && filter.Until.IsZero() {
					return errors.New("name deliveries by id, --request-id, --since or --until")
				}
				filter.Limit = f.limit
				if len(filter.IDs) > 0 {
					filter.Limit = 0 // the ids bound it
					if err := checkIDs(ctx, st, filter); err != nil {
						return err
					}
				}
				p := f.showPrinter(c.OutOrStdout())
				n, printed := 0, map[int64]bool{}
				err := st.EachDeliveryWithEntries(ctx, filter, f.includePatientData, func(d store.DeliveryRecord) error {
					n++
					if len(filter.IDs) > 0 {
						printed[d.ID] = true
					}
					return p.delivery(d)
				}, p.entry)
				if err := finish(p, n > 0, err); err != nil {
					return err
				}
				if len(filter.IDs) == 0 {
					f.noteLimit(c.ErrOrStderr(), n)
				} else if gone := missingIDs(filter.IDs, printed); len(gone) > 0 {
					// Retention pruned it between checkIDs and the query.
					return fmt.Errorf("delivery %v was removed while this command ran (retention?): the output lacks it", gone)
				}
				return nil
			})
		},
	}
	f.addCommon(c.Flags(), time.Minute)
	c.Flags().IntVar(&f.limit, "limit", 20, "at most this many deliveries (0: all)")
	c.Flags().BoolVar(&f.includePatientData, "include-patient-data", false, "also print each quarantined entry as sent (patient data; on the command line only)")
	_ = c.Flags().SetAnnotation("include-patient-data", commandLineOnly, []string{"true"})
	return c
}

func newDeliveriesReplayCommand() *cobra.Command {
	var f deliveriesFlags
	c := &cobra.Command{
		Use:   "replay",
		Short: "Store the quarantined entries that are valid by today's rules, and mark them replayed",
		Long: `Validate every quarantined entry not yet replayed (of the deliveries the
filter flags select) again, with today's rules, date and --time-zone, and
store the valid ones exactly as a delivery would: the receiver's write,
so content already stored is a no-op, every change gets a history row, and
a newer version stored since is not undone. Each original delivery's
valid entries become one delivery with outcome "replayed" and the original
request id; the entries are marked replayed in the same statement. Running
it again is safe. Entries still invalid are listed with their errors and
stay in quarantine.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return f.run(c, func(ctx context.Context, st *store.Store, filter store.DeliveryFilter) error {
				if filter.EHR == "" {
					return errors.New("--ehr (EHR) is required: the time zone is the EHR's")
				}
				loc, err := loadZone(f.timeZone)
				if err != nil {
					return err
				}
				rep, err := replay.Run(ctx, st, replay.Options{Filter: filter, Location: loc, Now: f.now, DryRun: f.dryRun})
				if rep.StillInvalid == nil {
					rep.StillInvalid = []replay.Invalid{}
				}
				// What was done before a failure is committed: say so.
				if err != nil && rep.Examined == 0 {
					return err
				}
				if perr := f.print(c.OutOrStdout(), rep, func(w io.Writer) { replayTable(w, rep, f.dryRun) }); err == nil {
					return perr
				}
				return fmt.Errorf("the replay stopped after the work above: %w", err)
			})
		},
	}
	// Entries already replayed are not read again: a replay cut short by
	// its timeout goes on where it stopped when run again.
	f.addCommon(c.Flags(), 30*time.Minute)
	c.Flags().StringVar(&f.timeZone, "time-zone", "", "the EHR's IANA time zone today, its spec.timeZone (required)")
	c.Flags().BoolVar(&f.dryRun, "dry-run", false, "validate and report, write nothing")
	return c
}

// run binds the environment, opens the store, checks its schema and calls
// do with the filter of the flags.
func (f *deliveriesFlags) run(c *cobra.Command, do func(context.Context, *store.Store, store.DeliveryFilter) error) error {
	if err := BindEnv(c.Flags()); err != nil {
		return err
	}
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("--output %q: want table or json", f.output)
	}
	// A typo would otherwise list nothing, which reads as "no such failure".
	if f.outcome != "" && !slices.Contains(store.Recorded, store.Outcome(f.outcome)) {
		return fmt.Errorf("--outcome %q: the delivery log records only %v", f.outcome, store.Recorded)
	}
	// No receiver serves an EHR that is not a DNS label: --ehr Nexus would
	// list nothing, and a replay find nothing pending.
	if f.ehr != "" && !receiver.ValidEHR(f.ehr) {
		return fmt.Errorf("--ehr %q: an EHR is a DNS label (lower-case letters, digits and '-', at most 63): nothing could match", f.ehr)
	}
	if f.limit < 0 {
		return fmt.Errorf("--limit %d: want 0 (all) or more", f.limit)
	}
	if f.now == nil {
		f.now = time.Now
	}
	filter := store.DeliveryFilter{EHR: f.ehr, RequestID: f.requestID, Outcome: store.Outcome(f.outcome)}
	var err error
	if filter.Since, err = parseWhen(f.since, f.now()); err != nil {
		return fmt.Errorf("--since: %w", err)
	}
	if filter.Until, err = parseWhen(f.until, f.now()); err != nil {
		return fmt.Errorf("--until: %w", err)
	}
	if !filter.Since.IsZero() && !filter.Until.IsZero() && !filter.Since.Before(filter.Until) {
		return fmt.Errorf("--since %s is not before --until %s: nothing could match", f.since, f.until)
	}
	dbURL, err := f.databaseURL.get()
	if err != nil {
		return err
	}
	// Ctrl-C or a Job's SIGTERM stops it like --timeout: a replay then
	// prints what it did before stopping.
	ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeoutCause(ctx, f.timeout, fmt.Errorf("--timeout %s passed", f.timeout))
	defer cancel()
	// The output is watched: a pipe or pager that stopped reading holds
	// the command in a write, the query open behind it (list and show
	// print as they read).
	out := &watchedWriter{w: c.OutOrStdout()}
	c.SetOut(out)
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("while opening the database: %w", err)
	}
	// lib/pq cannot interrupt a read: against a database that stopped
	// answering, a query outlives the context, and closing the store waits
	// for it. So the work runs aside, and is left to the process's exit
	// once abandonAfter has passed since --timeout or the signal.
	done := make(chan error, 1)
	go func() {
		if err := st.Ready(ctx); err != nil {
			if errors.Is(err, migrations.ErrPending) {
				done <- errors.New("the database's schema is older than this binary: run ehr-operator migrate first")
				return
			}
			done <- fmt.Errorf("while checking the database: %w", err)
			return
		}
		done <- do(ctx, st, filter)
	}()
	select {
	case err := <-done:
		_ = st.Close()
		return stoppedBy(ctx, err)
	case <-ctx.Done():
	}
	select {
	case err := <-done:
		_ = st.Close()
		return stoppedBy(ctx, err)
	case <-time.After(abandonAfter):
		if waited, writing := out.writing(); writing {
			return fmt.Errorf("stopped (%w), and the output has not been read for %s (a pipe or pager that stopped reading): exiting without waiting for it; the output is incomplete",
				context.Cause(ctx), waited.Round(time.Second))
		}
		return fmt.Errorf("stopped (%w), and the database has not answered for %s since: exiting without waiting for it (a replay's write under way may have been committed: run it again)",
			context.Cause(ctx), abandonAfter)
	}
}

// stoppedBy adds to err, the command's, why ctx ended when it did (--timeout
// or a signal): the store's errors only say "context deadline exceeded".
func stoppedBy(ctx context.Context, err error) error {
	cause := context.Cause(ctx)
	if err == nil || ctx.Err() == nil || cause == ctx.Err() {
		return err
	}
	return fmt.Errorf("%w (%v)", err, cause)
}

// watchedWriter tells whether a write to w is under way, and since when.
type watchedWriter struct {
	w     io.Writer
	since atomic.Int64 // the write's start, in Unix nanoseconds; 0: none
}

func (o *watchedWriter) Write(p []byte) (int, error) {
	o.since.Store(time.Now().UnixNano())
	defer o.since.Store(0)
	return o.w.Write(p)
}

func (o *watchedWriter) writing() (time.Duration, bool) {
	since := o.since.Load()
	if since == 0 {
		return 0, false
	}
	return time.Since(time.Unix(0, since)), true
}

// abandonAfter is how long a command waits for the database past --timeout
// or Ctrl-C: a replay's write already sent is waited for (up to 20 s, the
// store's transaction and grace), a read no longer than that.
var abandonAfter = 25 * time.Second

// noteLimit tells on standard error that n rows may be only the first of
// more, when they are as many as --limit allows.
func (f *deliveriesFlags) noteLimit(w io.Writer, n int) {
	if f.limit > 0 && n == f.limit {
		fmt.Fprintf(w, "note: showing the first %d (--limit); there may be more: raise --limit, or 0 for all\n", n)
	}
}

// checkIDs fails unless every delivery id of filter is one it selects:
// before anything is printed, so that a typo prints nothing but its error.
func checkIDs(ctx context.Context, st *store.Store, filter store.DeliveryFilter) error {
	found := make(map[int64]bool, len(filter.IDs))
	if err := st.EachDelivery(ctx, filter, func(d store.DeliveryRecord) error {
		found[d.ID] = true
		return nil
	}); err != nil {
		return err
	}
	if missing := missingIDs(filter.IDs, found); len(missing) > 0 {
		return fmt.Errorf("no delivery with id %v (under the other flags given)", missing)
	}
	return nil
}

// missingIDs are the ids not in found, each once however often it was
// given, in the order given.
func missingIDs(ids []int64, found map[int64]bool) []int64 {
	var missing []int64
	named := map[int64]bool{}
	for _, id := range ids {
		if !found[id] && !named[id] {
			missing = append(missing, id)
			named[id] = true
		}
	}
	return missing
}

// finish ends p's output after err, the store's: complete only without an
// error, which then says that what was printed (printed says whether
// anything was) is not all.
func finish(p listPrinter, printed bool, err error) error {
	if err == nil {
		return p.end(true)
	}
	_ = p.end(false)
	if !printed {
		return err
	}
	return fmt.Errorf("stopped part way, the output is incomplete: %w", err)
}

// parseWhen reads RFC 3339 or a duration before now; "" is no bound.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration ago such as 24h", s)
	}
	return now.Add(-d), nil
}

// loadZone reads an IANA zone name as the receiver does: "Local" and ""
// are refused.
func loadZone(name string) (*time.Location, error) {
	loc, err := time.LoadLocation(name)
	if err != nil || name == "" || strings.EqualFold(name, "Local") {
		return nil, fmt.Errorf("--time-zone (TIME_ZONE) %q is not an IANA time zone name; give the EHR's spec.timeZone", name)
	}
	return loc, nil
}

func (f *deliveriesFlags) print(w io.Writer, v any, table func(io.Writer)) error {
	if f.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func replayTable(w io.Writer, rep replay.Report, dry bool) {
	if dry {
		fmt.Fprintln(w, "Dry run: nothing written.")
	}
	fmt.Fprintf(w, "Examined\t%d\nValid now\t%d\nReplay deliveries\t%d\nWritten\t%d\nDuplicates\t%d\nSuperseded\t%d\nStill invalid\t%d\n",
		rep.Examined, rep.Valid, rep.Deliveries, rep.Written, rep.Duplicates, rep.Superseded, len(rep.StillInvalid))
	if rep.ContentDropped > 0 {
		fmt.Fprintf(w, "Content dropped\t%d\t(never replayed; retention removed them: `deliveries show` lists them)\n", rep.ContentDropped)
	}
	if len(rep.StillInvalid) == 0 {
		return
	}
	fmt.Fprintln(w, "\nDELIVERY\tREQUEST ID\tENTRY\tQUARANTINE ID\tERRORS")
	for _, inv := range rep.StillInvalid {
		errs := make([]string, len(inv.Errors))
		for k, e := range inv.Errors {
			errs[k] = e.Field + ": " + e.Message
		}
		fmt.Fprintf(w, "%d\t%s\t%d\t%d\t%s\n", inv.DeliveryID, inv.RequestID, inv.EntryIndex, inv.ID, strings.Join(errs, "; "))
	}
}
