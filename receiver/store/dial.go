package store

import (
	"context"
	"net"
	"time"
)

// A connection to a server that is gone without a word (a failover's old
// primary, a host lost, a network path dropped) must fail within seconds:
// lib/pq cannot interrupt a read (its cancel is a request on another
// connection), so a statement on such a connection would otherwise wait
// until the kernel gives up, about 15 minutes of retransmissions, holding
// its worker and its connection. Keepalive probes find a silent peer while
// the receiver waits for an answer; the user timeout (Linux) bounds data
// sent and never acknowledged. A server that is busy still acknowledges
// both, so a long statement is not cut.
const (
	keepAliveIdle     = 5 * time.Second
	keepAliveInterval = 5 * time.Second
	keepAliveCount    = 3
	userTimeout       = keepAliveIdle + keepAliveCount*keepAliveInterval
)

// dialer is the pool's lib/pq Dialer: net.Dialer with the keepalive and
// user timeout above on TCP connections.
type dialer struct{ d net.Dialer }

func newDialer() dialer {
	return dialer{d: net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: keepAliveIdle, Interval: keepAliveInterval, Count: keepAliveCount},
		Control:         setUserTimeout,
	}}
}

func (d dialer) Dial(network, address string) (net.Conn, error) { return d.d.Dial(network, address) }

func (d dialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.d.DialContext(ctx, network, address)
}

func (d dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return d.d.DialContext(ctx, network, address)
}
