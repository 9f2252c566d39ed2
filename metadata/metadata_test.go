package metadata

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

func TestConcurrentTransactionsShareOneHandle(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			err := db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte("n"))
				if err != nil {
					return err
				}
				return b.Put([]byte(strconv.Itoa(i)), nil)
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	var n int
	if err := db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket([]byte("n")).Stats().KeyN
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != 32 {
		t.Fatalf("got %d keys, want 32", n)
	}
	handlesMu.Lock()
	defer handlesMu.Unlock()
	if len(handles) != 0 {
		t.Fatalf("%d handles left open after the last transaction", len(handles))
	}
}

// TestFileNotHeldBetweenTransactions checks that another process can use the
// file while this one has it "open" but runs no transaction.
func TestFileNotHeldBetweenTransactions(t *testing.T) {
	if path := os.Getenv("STRATA_METADATA_CHILD"); path != "" {
		db, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucket([]byte("child"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return
	}
	path := filepath.Join(t.TempDir(), "metadata.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFileNotHeldBetweenTransactions$")
	cmd.Env = append(os.Environ(), "STRATA_METADATA_CHILD="+path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if err := db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("child")) == nil {
			t.Error("the child's bucket is missing")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestOpenReportsBadPath(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "missing", "metadata.db")); err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}
}

// TestHoldKeepsTheFileOpen checks that a Hold keeps the file (and its lock)
// from one transaction to the next, and lets it go once done.
func TestHoldKeepsTheFileOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metadata.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	// Another open file description conflicts with bbolt's flock, as another
	// process would.
	locked := func() bool {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != nil && err != unix.EWOULDBLOCK {
			t.Fatal(err)
		}
		return err == unix.EWOULDBLOCK
	}
	done := db.Hold()
	if locked() {
		t.Error("a Hold alone opened the file")
	}
	var first, second *bolt.DB
	db.View(func(tx *bolt.Tx) error { first = tx.DB(); return nil })
	if !locked() {
		t.Error("the file was closed between transactions of a Hold")
	}
	db.View(func(tx *bolt.Tx) error { second = tx.DB(); return nil })
	if first != second {
		t.Error("the second transaction of a Hold opened the file again")
	}
	done()
	done() // a second call changes nothing
	if locked() {
		t.Error("the file stays locked after the Hold is done")
	}
	handlesMu.Lock()
	defer handlesMu.Unlock()
	if len(handles) != 0 {
		t.Fatalf("%d handles left after the Hold", len(handles))
	}
}
