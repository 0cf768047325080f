package monitoring

import (
	"slices"
	"testing"
)

func TestSeriesIn(t *testing.T) {
	exprs := []string{
		`histogram_quantile(0.99, sum by (ehr, le) (rate(ehr_receiver_request_duration_seconds_bucket{ehr=~"$ehr",code="200"}[5m])))`,
		`sum by (ehr) (ehr_operator_integration_ready{ehrintegration_namespace="x"}) + on(ehr) ehr_receiver_database_up`,
		`rate(controller_runtime_reconcile_total[5m]) > ehr_receiver_database_up`,
	}
	if got, want := SeriesIn(exprs, "ehr_receiver_"), []string{"ehr_receiver_database_up", "ehr_receiver_request_duration_seconds_bucket"}; !slices.Equal(got, want) {
		t.Errorf("receiver series %v, want %v", got, want)
	}
	if got, want := SeriesIn(exprs, ""), []string{"controller_runtime_reconcile_total", "ehr_operator_integration_ready",
		"ehr_receiver_database_up", "ehr_receiver_request_duration_seconds_bucket"}; !slices.Equal(got, want) {
		t.Errorf("all series %v, want %v", got, want)
	}
}

func TestExposed(t *testing.T) {
	scrape := []byte("# HELP a_total A.\n# TYPE a_total counter\na_total{ehr=\"n\"} 1\nb_seconds_bucket{le=\"+Inf\"} 2\nc 3\n\n")
	got := Exposed(scrape)
	for _, n := range []string{"a_total", "b_seconds_bucket", "c"} {
		if !got[n] {
			t.Errorf("%s not found in %v", n, got)
		}
	}
	if m := Missing([]string{"a_total", "d"}, got); !slices.Equal(m, []string{"d"}) {
		t.Errorf("missing %v, want [d]", m)
	}
}

// TestDashboardQueries reads the shipped dashboard: every panel queries
// something, and only series of ours or Prometheus' own functions.
func TestDashboardQueries(t *testing.T) {
	exprs, err := DashboardQueries("../..")
	if err != nil {
		t.Fatal(err)
	}
	if len(exprs) < 10 {
		t.Errorf("%d queries in the dashboard, want the panels' at least 10", len(exprs))
	}
	if len(SeriesIn(exprs, "ehr_receiver_")) == 0 || len(SeriesIn(exprs, "ehr_operator_")) == 0 {
		t.Errorf("the dashboard should show receiver and manager series: %v", SeriesIn(exprs, ""))
	}
}
