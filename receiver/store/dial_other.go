//go:build !linux

package store

import "syscall"

// setUserTimeout: TCP_USER_TIMEOUT is Linux's; elsewhere the keepalive
// probes alone bound a silent connection.
func setUserTimeout(string, string, syscall.RawConn) error { return nil }
