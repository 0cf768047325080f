// Command plot draws `make bench`'s cells (the JSON of hack/bench) as a PNG:
// appointments/s against batch size, one line per number of senders for
// the receiver (solid) and for the limit (dashed), both axes logarithmic.
//
//	go -C hack run ./plot -in ../bench-results.json -out ../docs/performance-throughput.png
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"os"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// cell is the part of hack/bench's JSON the plot needs.
type cell struct {
	Durable          bool    `json:"durable"`
	Batch            int     `json:"batch"`
	Senders          int     `json:"senders"`
	AppointmentsPerS float64 `json:"appointments_per_s"`
	LimitPerS        float64 `json:"limit_appointments_per_s"`
}

func main() {
	in := flag.String("in", "bench-results.json", "hack/bench's JSON")
	out := flag.String("out", "docs/performance-throughput.png", "PNG to write")
	mode := flag.String("mode", "durable", "which cells to draw: durable or fast (hack/bench's two tables)")
	flag.Parse()
	if *mode != "durable" && *mode != "fast" {
		fmt.Fprintf(os.Stderr, "plot: -mode %q: want durable or fast\n", *mode)
		os.Exit(2)
	}
	if err := run(*in, *out, *mode == "durable"); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
}

func run(in, out string, durable bool) error {
	b, err := os.ReadFile(in)
	if err != nil {
		return fmt.Errorf("while reading the results: %w", err)
	}
	var all []cell
	if err := json.Unmarshal(b, &all); err != nil {
		return fmt.Errorf("while decoding %s: %w", in, err)
	}
	mode := map[bool]string{true: "durable", false: "fast"}[durable]
	cells := slices.DeleteFunc(all, func(c cell) bool { return c.Durable != durable })
	if len(cells) == 0 {
		return fmt.Errorf("%s has no %s cells", in, mode)
	}
	bySenders := map[int][]cell{}
	var senders []int
	for _, c := range cells {
		if _, ok := bySenders[c.Senders]; !ok {
			senders = append(senders, c.Senders)
		}
		bySenders[c.Senders] = append(bySenders[c.Senders], c)
	}
	slices.Sort(senders)

	p := plot.New()
	p.Title.Text = "Appointments written per second (2 cores, loopback, " + map[bool]string{
		true: "durable: fsync on", false: "fast: fsync off"}[durable] + ")"
	p.X.Label.Text = "appointments per request (batch size)"
	p.Y.Label.Text = "appointments/s"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Points(8)
	p.Add(plotter.NewGrid())
	palette := []color.Color{
		color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
		color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
		color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
		color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	}
	lo, hi := cells[0].AppointmentsPerS, cells[0].AppointmentsPerS
	for _, c := range cells {
		lo = min(lo, c.AppointmentsPerS, c.LimitPerS)
		hi = max(hi, c.AppointmentsPerS, c.LimitPerS)
	}
	// Room above the lines for the legend (log scale: a factor).
	p.Y.Min, p.Y.Max = max(lo/1.5, 1), hi*6
	// One batch size (BENCH_BATCHES=1) leaves the X axis no width, which a
	// log scale cannot pad by itself (it panics).
	oneBatch := !slices.ContainsFunc(cells, func(c cell) bool { return c.Batch != cells[0].Batch })
	if oneBatch {
		b := float64(cells[0].Batch)
		p.X.Min, p.X.Max = b/2, b*2
	}
	for i, s := range senders {
		cs := bySenders[s]
		slices.SortFunc(cs, func(a, b cell) int { return a.Batch - b.Batch })
		rcv, lim := make(plotter.XYs, len(cs)), make(plotter.XYs, len(cs))
		for j, c := range cs {
			rcv[j] = plotter.XY{X: float64(c.Batch), Y: max(c.AppointmentsPerS, 1)}
			lim[j] = plotter.XY{X: float64(c.Batch), Y: max(c.LimitPerS, 1)}
		}
		col := palette[i%len(palette)]
		for _, line := range []struct {
			xys    plotter.XYs
			name   string
			dashed bool
		}{{rcv, "receiver, " + plural(s, "sender"), false}, {lim, "limit, " + plural(s, "sender"), true}} {
			l, pts, err := plotter.NewLinePoints(line.xys)
			if err != nil {
				return err
			}
			l.Color, l.Width = col, vg.Points(2)
			pts.Color, pts.Shape = col, draw.CircleGlyph{}
			if line.dashed {
				l.Dashes = []vg.Length{vg.Points(6), vg.Points(4)}
				pts.Shape = draw.TriangleGlyph{}
			}
			p.Add(l, pts)
			p.Legend.Add(line.name, l, pts)
		}
	}
	if err := p.Save(7*vg.Inch, 4.5*vg.Inch, out); err != nil {
		return fmt.Errorf("while writing %s: %w", out, err)
	}
	fmt.Println("Wrote", out)
	return nil
}

func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}
