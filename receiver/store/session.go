package store

import (
	"context"
	"database/sql/driver"
	"strings"
)

// sessionSettings are the receiver's settings of each of its sessions, in
// the order they are set.
//
// plan_cache_mode: a generic plan of the write statement. Planning it per
// call (a custom plan) costs a large part of the statement
// (docs/performance.md), and its plan does not depend on the arrays'
// sizes (OFFSET 0 pins the history check to an index probe; the rest is
// inserts and sorts). Forced rather than left to plan_cache_mode = auto,
// which may keep custom plans when small groups make them look cheap.
//
// enable_seqscan: that generic plan is made once per connection, with the
// statistics of that moment, and kept until an ANALYZE invalidates it.
// Made when the tables were a few rows (a new integration, just after its
// first autoanalyze), it read them by sequential scan, per entry:
// measured, 0.2 ms a statement grew to 15 ms as the tables grew, for the
// minute until the next autoanalyze (docs/decisions.md). Every read of
// this receiver has an index; sequential scans are left for when none
// serves.
var sessionSettings = []struct{ name, value string }{
	{"plan_cache_mode", "force_generic_plan"},
	{"enable_seqscan", "off"},
}

// sessionSetup is the statement that sets sessionSettings on a new
// connection, leaving out those the database URL sets as run-time
// parameters (the URL wins). They are SET once the session is open, not
// sent as startup parameters: PgBouncer closes a connection whose startup
// packet names a parameter it does not know ("unsupported startup
// parameter", SQLSTATE 08P01) unless ignore_startup_parameters lists it,
// and then the setting is dropped without a word. A SET reaches the
// server in every mode (PgBouncer's session mode keeps it for the
// client's session); it costs one round trip per new connection, and the
// pool's connections live up to 30 minutes.
func sessionSetup(runtime map[string]string) string {
	var b strings.Builder
	for _, s := range sessionSettings {
		if _, set := runtime[s.name]; set {
			continue
		}
		b.WriteString("SET " + s.name + " = " + s.value + ";")
	}
	return b.String()
}

// sessionConnector opens lib/pq connections and runs setup on each before
// the pool uses it: one simple query, one round trip.
type sessionConnector struct {
	driver.Connector
	setup string
}

func (c sessionConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil || c.setup == "" {
		return conn, err
	}
	if _, err := conn.(driver.ExecerContext).ExecContext(ctx, c.setup, nil); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return conn, nil
}
