// Command probe is the e2e tests' network prober (image localhost/ehr-probe:1,
// built by hack/image/build.sh probe): nothing can be pulled where the local
// cluster runs, so it is built here from this file.
//
//	probe --listen :8080        accept (and close) connections until SIGTERM
//	probe HOST:PORT...          try a TCP connection to each, one line each:
//	                            "HOST:PORT open" or "HOST:PORT closed: <error>"
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "", "address to accept connections on until SIGTERM")
	timeout := flag.Duration("timeout", 3*time.Second, "how long one connection attempt may take")
	flag.Parse()
	if *listen != "" {
		serve(*listen)
		return
	}
	for _, addr := range flag.Args() {
		fmt.Println(probe(addr, *timeout))
	}
}

// probe reports whether a TCP connection to addr opens within timeout. A
// NetworkPolicy's refusal shows as a timeout (DROP) or a refusal (REJECT).
func probe(addr string, timeout time.Duration) string {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return fmt.Sprintf("%s closed: %v", addr, err)
	}
	_ = c.Close()
	return addr + " open"
}

func serve(addr string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	<-sigs
}
