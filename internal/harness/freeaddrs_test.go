package harness

import "testing"

// TestFreeAddrsAreDistinct: ports taken one after another, each closed
// before the next, repeat (200 of them did in 49 of 50 rounds here), and a
// receiver given the same port twice does not start.
func TestFreeAddrsAreDistinct(t *testing.T) {
	addrs, err := FreeAddrs(200)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("FreeAddrs(200) gave %s twice", a)
		}
		seen[a] = true
	}
}
