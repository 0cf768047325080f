package monitoring

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/insighthealth/ehr-operator/internal/harness"
	shipped "github.com/insighthealth/ehr-operator/internal/monitoring"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
)

// TestDashboardQueriesReceiverSeries scrapes a real receiver, after one
// accepted and one refused delivery, and checks that every receiver series
// the dashboard and the alerts query is exported by it. (The manager's
// series are checked the same way in controllers, TestManagerSeries.)
func TestDashboardQueriesReceiverSeries(t *testing.T) {
	r, err := harness.StartReceiver(binary, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Stop() }()
	client := harness.NewClient(1)
	ctx := context.Background()
	gen := harness.NewGen("mon")
	if a := harness.Post(ctx, client, r.URL, gen.Body(0, 2), ""); a.Err != nil || a.Status != http.StatusOK {
		t.Fatalf("a good delivery: %d %v", a.Status, a.Err)
	}
	bad, _ := http.NewRequest(http.MethodPost, r.URL, strings.NewReader(`{"appointments":[]}`))
	bad.Header.Set("Content-Type", "application/json")
	bad.Header.Set("X-API-Key", harness.APIKey) // and no signature
	if resp, err := client.Do(bad); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("an unsigned delivery: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	status, scrape, err := harness.Get(r.MetricsURL + "/metrics")
	if err != nil || status != http.StatusOK {
		t.Fatalf("scrape: %d %v", status, err)
	}
	exposed := shipped.Exposed([]byte(scrape))
	dashboard, err := shipped.DashboardQueries("../..")
	if err != nil {
		t.Fatal(err)
	}
	rules, err := shipped.RuleQueries("../..")
	if err != nil {
		t.Fatal(err)
	}
	for what, exprs := range map[string][]string{"dashboard": dashboard, "alert rules": rules} {
		used := shipped.SeriesIn(exprs, "ehr_receiver_")
		if len(used) == 0 {
			t.Errorf("the %s query no receiver series", what)
		}
		if m := shipped.Missing(used, exposed); len(m) > 0 {
			t.Errorf("the %s query receiver series the receiver does not export: %v", what, m)
		}
		t.Logf("%s: %d receiver series, all exported", what, len(used))
	}
}
