package server

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/cloak-containers/cloak/kbs/store/pgtest"
)

// StorageEnv=postgres runs every test that uses startKBS on PostgreSQL
// (a fresh database each) instead of bbolt.
const StorageEnv = "CLOAK_KBS_TEST_STORAGE"

// suitePG is the PostgreSQL of a StorageEnv=postgres run, nil otherwise.
var suitePG *pgtest.Server

var (
	suiteMu  sync.Mutex
	suiteDBs = map[string]string{} // data dir -> database URL
)

// suiteStorage is the --storage of a server on dir: "" (bbolt), or in a
// StorageEnv=postgres run one database per data dir, so that a server
// restarted on the same dir finds its state.
func suiteStorage(t *testing.T, dir string) string {
	if suitePG == nil {
		return ""
	}
	suiteMu.Lock()
	defer suiteMu.Unlock()
	if suiteDBs[dir] == "" {
		suiteDBs[dir] = suitePG.NewDatabase(t)
	}
	return suiteDBs[dir]
}

// skipOnDatabaseClock skips a test that moves the server's clock to expire
// sessions: on PostgreSQL sessions expire by the database's clock
// (TestReplicasRefuseExpiredSession covers that).
func skipOnDatabaseClock(t *testing.T) {
	if suitePG != nil {
		t.Skipf("%s=postgres: sessions expire by the database's clock, not the test's", StorageEnv)
	}
}

func TestMain(m *testing.M) {
	if os.Getenv(StorageEnv) != "postgres" {
		os.Exit(m.Run())
	}
	var err error
	if suitePG, err = pgtest.Launch(); err != nil {
		fmt.Fprintf(os.Stderr, "%s=postgres: %v\n", StorageEnv, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := suitePG.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}
