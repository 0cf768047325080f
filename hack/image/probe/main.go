// Command probe is the e2e tests' network prober (image localhost/ehr-probe:1,
// built by hack/image/build.sh probe): nothing can be pulled where the local
// cluster runs, so it is built here from this file.
//
//	probe --listen :8080,udp::53   accept (and close) TCP connections, and echo
//	                               UDP datagrams, on each address until SIGTERM
//	probe HOST:PORT udp:HOST:PORT  try each, one line each: "TARGET open" or
//	                               "TARGET closed: <error>"; a udp: target is
//	                               open when it echoes a datagram
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "", "comma-separated addresses to serve until SIGTERM (udp:ADDR echoes datagrams)")
	timeout := flag.Duration("timeout", 3*time.Second, "how long one attempt may take")
	flag.Parse()
	if *listen != "" {
		closers, err := serve(strings.Split(*listen, ","))
		if err != nil {
			fmt.Fprintln(os.Stderr, "probe:", err)
			os.Exit(1)
		}
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		<-sigs
		for _, c := range closers {
			_ = c.Close()
		}
		return
	}
	for _, target := range flag.Args() {
		fmt.Println(probe(target, *timeout))
	}
}

// probe reports whether target answers within timeout: a TCP connection
// opens, or (udp:HOST:PORT) a datagram comes back. A NetworkPolicy's
// refusal shows as a timeout (DROP) or a refusal (REJECT).
func probe(target string, timeout time.Duration) string {
	var err error
	if addr, ok := strings.CutPrefix(target, "udp:"); ok {
		err = echo(addr, timeout)
	} else {
		var c net.Conn
		if c, err = net.DialTimeout("tcp", target, timeout); err == nil {
			_ = c.Close()
		}
	}
	if err != nil {
		return fmt.Sprintf("%s closed: %v", target, err)
	}
	return target + " open"
}

// echo sends a datagram to addr and waits for it to come back.
func echo(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("udp", addr, timeout)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	msg := []byte("ehr-probe")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if !bytes.Equal(buf[:n], msg) {
		return errors.New("a datagram came back, but not the one sent")
	}
	return nil
}

// serve listens on each address (udp:ADDR for UDP) and serves it in the
// background: TCP connections are accepted and closed, datagrams echoed.
func serve(addrs []string) ([]io.Closer, error) {
	var closers []io.Closer
	for _, a := range addrs {
		if addr, ok := strings.CutPrefix(a, "udp:"); ok {
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				return closers, err
			}
			closers = append(closers, pc)
			go func() {
				buf := make([]byte, 512)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					_, _ = pc.WriteTo(buf[:n], from)
				}
			}()
			continue
		}
		l, err := net.Listen("tcp", a)
		if err != nil {
			return closers, err
		}
		closers = append(closers, l)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_ = c.Close()
			}
		}()
	}
	return closers, nil
}
