// Package pgtest starts a throwaway PostgreSQL server for tests: Debian's
// initdb and pg_ctl on a test-owned data directory, listening on a free
// loopback port and a socket in that directory, stopped and removed when
// the test ends.
//
// Tests skip when no PostgreSQL binaries are installed, unless
// CLOAK_REQUIRE_POSTGRES is set (CI sets it), where they fail instead.
package pgtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// RequireEnv makes a missing PostgreSQL a failure instead of a skip.
const RequireEnv = "CLOAK_REQUIRE_POSTGRES"

// Server is a running test PostgreSQL server.
type Server struct {
	Port int
	dir  string // base dir: data/ and server.log
	bin  string
	asPG bool // running as root: run the server as the postgres user
}

// BinDir returns the directory of initdb and pg_ctl, newest version first,
// or "" when none is installed.
func BinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return version(b) - version(a) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d
		}
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(p)
	}
	return ""
}

func version(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Start initialises and starts a server for t; t's cleanup stops it.
func Start(t testing.TB) *Server {
	t.Helper()
	if BinDir() == "" {
		if os.Getenv(RequireEnv) != "" {
			t.Fatalf("PostgreSQL binaries not found (/usr/lib/postgresql/*/bin) and %s is set: install them with apt-get install -y postgresql", RequireEnv)
		}
		t.Skipf("PostgreSQL binaries not found (/usr/lib/postgresql/*/bin); apt-get install -y postgresql, or set %s=1 to fail instead", RequireEnv)
	}
	s, err := Launch()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Log(err)
		}
	})
	return s
}

// Launch initialises and starts a server outside any one test (for a
// TestMain); Close stops it. It fails when no binaries are installed.
func Launch() (s *Server, err error) {
	bin := BinDir()
	if bin == "" {
		return nil, fmt.Errorf("PostgreSQL binaries not found (/usr/lib/postgresql/*/bin): apt-get install -y postgresql")
	}
	base, err := os.MkdirTemp("", "pgtest")
	if err != nil {
		return nil, err
	}
	s = &Server{dir: base, bin: bin, asPG: os.Geteuid() == 0}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := os.Mkdir(s.dataDir(), 0o700); err != nil {
		return nil, err
	}
	if s.asPG {
		// The server refuses to run as root; the postgres user owns the
		// data directory and must be able to reach it.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs a postgres user (Debian's postgresql package creates it): %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chmod(base, 0o755); err != nil {
			return nil, err
		}
		for _, p := range []string{base, s.dataDir()} {
			if err := os.Chown(p, uid, gid); err != nil {
				return nil, err
			}
		}
	}
	if out, err := s.cmd("initdb", "-D", s.dataDir(), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	if s.Port, err = freePort(); err != nil {
		return nil, err
	}
	return s, s.start()
}

// Close stops the server if it runs and removes its directory.
func (s *Server) Close() error {
	err := s.stop()
	os.RemoveAll(s.dir)
	return err
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

func (s *Server) cmd(name string, args ...string) *exec.Cmd {
	path := filepath.Join(s.bin, name)
	if s.asPG {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	}
	return exec.Command(path, args...)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Restart starts the (stopped) server again on the same port and data.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
}

func (s *Server) start() error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", s.Port, s.dataDir())
	out, err := s.cmd("pg_ctl", "-D", s.dataDir(), "-l", filepath.Join(s.dir, "server.log"), "-o", opts, "-w", "-t", "60", "start").CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
		return fmt.Errorf("pg_ctl start: %w\n%s\nserver log:\n%s", err, out, log)
	}
	return nil
}

// Stop stops the server with a fast shutdown (open connections are cut).
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if out, err := s.cmd("pg_ctl", "-D", s.dataDir(), "-m", "fast", "-w", "stop").CombinedOutput(); err != nil {
		t.Fatalf("pg_ctl stop: %v\n%s", err, out)
	}
}

// stop ends a server still running: a fast shutdown, then SIGQUIT
// (immediate shutdown) to its PID if that did not work.
func (s *Server) stop() error {
	pid := s.pid()
	if pid == 0 {
		return nil
	}
	if out, err := s.cmd("pg_ctl", "-D", s.dataDir(), "-m", "fast", "-w", "-t", "20", "stop").CombinedOutput(); err != nil {
		syscall.Kill(pid, syscall.SIGQUIT)
		return fmt.Errorf("pg_ctl stop: %w\n%s; sent SIGQUIT to %d", err, out, pid)
	}
	return nil
}

// pid is the postmaster's PID from its pid file, 0 if not running.
func (s *Server) pid() int {
	raw, err := os.ReadFile(filepath.Join(s.dataDir(), "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := bytes.Cut(raw, []byte("\n"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(first)))
	if pid > 0 && syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// URL returns the connection URL of database db on the loopback port.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

var dbCount atomic.Int64

// NewDatabase creates an empty database and returns its URL.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("test_%d_%d", os.Getpid(), dbCount.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		t.Fatalf("connect to test PostgreSQL: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	return s.URL(name)
}
