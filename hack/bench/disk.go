package main

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
)

// fsyncSecs is pg_test_fsync's seconds per test (-s).
const fsyncSecs = 2

// Filesystem magic numbers (statfs(2)) of the common ones.
var fsNames = map[int64]string{
	0xEF53: "ext4", 0x01021994: "tmpfs", 0x58465342: "xfs", 0x9123683E: "btrfs",
	0x794c7630: "overlayfs", 0x6969: "nfs", 0x2FC12FC1: "zfs",
}

// printDisk says where the durable cluster's data and WAL are and what one
// WAL flush costs there: pg_test_fsync's first section (one 8 kB write, then
// each sync method), on the same filesystem, with the method PostgreSQL
// uses marked. A data directory in memory (tmpfs) would measure nothing, so
// it fails.
func printDisk(ctx context.Context, cluster *pgtest.Cluster) error {
	dir := cluster.DataDir()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("while reading the data directory's filesystem: %w", err)
	}
	fs, ok := fsNames[st.Type]
	if !ok {
		fs = fmt.Sprintf("filesystem type %#x", st.Type)
	}
	if fs == "tmpfs" {
		return fmt.Errorf("the durable cluster's data directory %s is in memory (tmpfs): set TMPDIR to a directory on a disk", dir)
	}
	method, err := setting(ctx, cluster.URL(), "wal_sync_method")
	if err != nil {
		return err
	}
	fmt.Printf("Data directory and WAL: %s (%s)\n", dir, fs)
	lines, err := testFsync(ctx, cluster.BinDir(), dir)
	if err != nil {
		return err
	}
	fmt.Printf("pg_test_fsync -s %d there, one 8 kB write then a sync (wal_sync_method=%s is PostgreSQL's):\n", fsyncSecs, method)
	for _, l := range lines {
		mark := "  "
		if f := strings.Fields(l); len(f) > 0 && f[0] == method {
			mark = "=>"
		}
		fmt.Printf("  %s %s\n", mark, strings.TrimSpace(l))
	}
	return nil
}

// testFsync runs pg_test_fsync in dir and returns the lines of its first
// section, stopping it there (the other sections are not needed here).
func testFsync(ctx context.Context, binDir, dir string) ([]string, error) {
	// postgres may be a link on PATH: pg_test_fsync is in its real directory.
	if target, err := filepath.EvalSymlinks(filepath.Join(binDir, "postgres")); err == nil {
		binDir = filepath.Dir(target)
	}
	bin := filepath.Join(binDir, "pg_test_fsync")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("no pg_test_fsync beside postgres (it comes with the PostgreSQL server package): %w", err)
	}
	cmd := exec.CommandContext(ctx, bin, "-s", fmt.Sprint(fsyncSecs), "-f", filepath.Join(dir, "pg_test_fsync.tmp"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("while starting pg_test_fsync: %w", err)
	}
	var lines []string
	in := false
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "Compare file sync methods using one"):
			in = true
		case in && strings.HasPrefix(l, "Compare"):
			// Its file is removed at exit; SIGINT makes it clean up.
			_ = cmd.Process.Signal(syscall.SIGINT)
			_ = cmd.Wait()
			_ = os.Remove(filepath.Join(dir, "pg_test_fsync.tmp"))
			return lines, nil
		case in && strings.Contains(l, "ops/sec"):
			lines = append(lines, l)
		}
	}
	err = cmd.Wait()
	if len(lines) == 0 {
		return nil, fmt.Errorf("pg_test_fsync printed no sync figures: %w", errors.Join(err, sc.Err()))
	}
	return lines, nil
}

func setting(ctx context.Context, url, name string) (string, error) {
	db, err := sql.Open("postgres", url)
	if err != nil {
		return "", err
	}
	defer db.Close()
	var v string
	if err := db.QueryRowContext(ctx, "SHOW "+name).Scan(&v); err != nil {
		return "", fmt.Errorf("while reading PostgreSQL setting %s: %w", name, err)
	}
	return v, nil
}
