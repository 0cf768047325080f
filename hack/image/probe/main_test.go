package main

import (
	"net"
	"strings"
	"testing"
	"time"
)

// The prober's verdicts, on loopback: what listens is open over TCP and
// UDP, and what does not is closed, so an e2e "closed" means the policy.
func TestProbe(t *testing.T) {
	closers, err := serve([]string{"127.0.0.1:0", "udp:127.0.0.1:0"})
	defer func() {
		for _, c := range closers {
			_ = c.Close()
		}
	}()
	if err != nil {
		t.Fatal(err)
	}
	tcp := closers[0].(net.Listener).Addr().String()
	udp := "udp:" + closers[1].(net.PacketConn).LocalAddr().String()
	// A port nobody listens on, over both protocols.
	free, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	silent := free.LocalAddr().String()
	_ = free.Close()

	for target, open := range map[string]bool{tcp: true, udp: true, silent: false, "udp:" + silent: false} {
		got := probe(target, time.Second)
		if want := target + " open"; (got == want) != open {
			t.Errorf("probe(%s) = %q, want open: %v", target, got, open)
		}
		if !strings.HasPrefix(got, target+" ") {
			t.Errorf("probe(%s) = %q: the line must start with the target", target, got)
		}
	}
}
