package main

import "fmt"

// target is one of issue 14's goals for a cell of the table.
type target struct {
	durable        bool
	batch, senders int
	minRatio       float64 // receiver/limit at least
	maxP99Ms       float64 // 0: no latency goal
}

var targets = []target{
	{durable: true, batch: 1, senders: 32, minRatio: 1.5, maxP99Ms: 25},
	{durable: true, batch: 1, senders: 8, minRatio: 1.0},
	{durable: true, batch: 100, senders: 8, minRatio: 0.85},
	{durable: false, batch: 100, senders: 8, minRatio: 0.85},
}

// printTargets says, for each target whose cell was run, what was
// measured and whether it was met.
func printTargets(cells []Cell) {
	fmt.Printf("\nTargets:\n")
	for _, t := range targets {
		goal := fmt.Sprintf("%s, batch %d, %d senders: receiver/limit >= %.0f%%", modeName(t.durable), t.batch, t.senders, 100*t.minRatio)
		if t.maxP99Ms > 0 {
			goal += fmt.Sprintf(", p99 < %.0f ms", t.maxP99Ms)
		}
		var c *Cell
		for i := range cells {
			if cells[i].Durable == t.durable && cells[i].Batch == t.batch && cells[i].Senders == t.senders {
				c = &cells[i]
			}
		}
		if c == nil {
			fmt.Printf("  %-72s not run\n", goal)
			continue
		}
		met := c.Ratio >= t.minRatio && (t.maxP99Ms == 0 || c.P99Ms < t.maxP99Ms)
		verdict := "met"
		if !met {
			verdict = "MISSED"
		}
		fmt.Printf("  %-72s %.0f%% (%.0f vs %.0f appts/s), p99 %.2f ms: %s\n",
			goal, 100*c.Ratio, c.AppointmentsPerS, c.LimitPerS, c.P99Ms, verdict)
	}
}
