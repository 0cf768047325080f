// Package monitoring reads what the chart ships for Prometheus and Grafana
// (charts/ehr-operator/files): which series its alerts and dashboard query,
// so tests can hold them against what the binaries really export.
package monitoring

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// Files are the shipped rule file and dashboard, relative to the repository.
var Files = struct{ Rules, Dashboard string }{
	Rules:     "charts/ehr-operator/files/prometheus-rules.yaml",
	Dashboard: "charts/ehr-operator/files/dashboard.json",
}

// ours matches the names of the series the project exports or relies on:
// the receivers', the manager's and controller-runtime's.
var ours = regexp.MustCompile(`\b(?:ehr_(?:receiver|operator)|controller_runtime)_[a-z0-9_]+`)

// DashboardQueries are the PromQL expressions of the dashboard's panels.
func DashboardQueries(repo string) ([]string, error) {
	raw, err := os.ReadFile(filepath.Join(repo, Files.Dashboard))
	if err != nil {
		return nil, err
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", Files.Dashboard, err)
	}
	var exprs []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			return nil, fmt.Errorf("%s: panel %q has no query", Files.Dashboard, p.Title)
		}
		for _, t := range p.Targets {
			exprs = append(exprs, t.Expr)
		}
	}
	return exprs, nil
}

// SeriesIn lists, sorted and once each, the series names that start with
// prefix in the expressions.
func SeriesIn(exprs []string, prefix string) []string {
	var names []string
	for _, e := range exprs {
		for _, n := range ours.FindAllString(e, -1) {
			if strings.HasPrefix(n, prefix) {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// Exposed are the sample names of a Prometheus text exposition (a scrape of
// /metrics): a histogram shows as its _bucket, _sum and _count.
func Exposed(scrape []byte) map[string]bool {
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(scrape))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}

// Missing are the names not exposed.
func Missing(names []string, exposed map[string]bool) []string {
	var out []string
	for _, n := range names {
		if !exposed[n] {
			out = append(out, n)
		}
	}
	return out
}

// rule is one alert of the shipped rule file.
type rule struct {
	Alert string `json:"alert"`
	Expr  string `json:"expr"`
}

// rules are the shipped alert rules, in file order.
func rules(repo string) ([]rule, error) {
	raw, err := os.ReadFile(filepath.Join(repo, Files.Rules))
	if err != nil {
		return nil, err
	}
	var f struct {
		Groups []struct {
			Rules []rule `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", Files.Rules, err)
	}
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// RuleQueries are the expressions of the shipped alert rules.
func RuleQueries(repo string) ([]string, error) {
	rs, err := rules(repo)
	var exprs []string
	for _, r := range rs {
		exprs = append(exprs, r.Expr)
	}
	return exprs, err
}

// AlertNames are the names of the shipped alerts.
func AlertNames(repo string) ([]string, error) {
	rs, err := rules(repo)
	var names []string
	for _, r := range rs {
		names = append(names, r.Alert)
	}
	return names, err
}
