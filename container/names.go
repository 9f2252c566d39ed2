package container

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/strata-storage/strata/errdefs"
)

// validName is Docker's rule for container names.
var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)

// checkName returns name without Docker's leading "/", or ErrInvalid when
// it breaks Docker's rule. "" stays "": a name is generated.
func checkName(name string) (string, error) {
	if name == "" {
		return "", nil
	}
	trimmed := strings.TrimPrefix(name, "/")
	if !validName.MatchString(trimmed) {
		return "", fmt.Errorf("Invalid container name (%s), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed: %w", name, errdefs.ErrInvalid)
	}
	return trimmed, nil
}

// nameFree fails with ErrExists, in Docker's words, when name is taken.
func nameFree(tx *bolt.Tx, name string) error {
	names := tx.Bucket(bucketNames)
	if names == nil {
		return nil
	}
	if id := names.Get([]byte(name)); id != nil {
		return fmt.Errorf("Conflict. The container name \"/%s\" is already in use by container \"%s\". You have to remove (or rename) that container to be able to reuse that name: %w",
			name, id, errdefs.ErrExists)
	}
	return nil
}

// Names are generated as Docker generates them, adjective_surname, from
// shorter lists of its kind: surnames of scientists and engineers.
var (
	adjectives = []string{
		"admiring", "agitated", "amazing", "bold", "brave", "busy", "clever",
		"compassionate", "dazzling", "eager", "elegant", "epic", "festive",
		"focused", "gallant", "happy", "hopeful", "jolly", "keen", "loving",
		"modest", "nifty", "optimistic", "peaceful", "quirky", "serene",
		"sharp", "stoic", "tender", "vibrant", "wizardly", "zealous",
	}
	surnames = []string{
		"babbage", "bohr", "curie", "darwin", "dijkstra", "einstein", "euler",
		"faraday", "fermi", "franklin", "gauss", "goldberg", "hamilton",
		"hopper", "hypatia", "kepler", "knuth", "lamport", "liskov", "lovelace",
		"maxwell", "meitner", "newton", "noether", "pascal", "ritchie",
		"shannon", "thompson", "torvalds", "turing", "wozniak", "yalow",
	}
)

// generateName returns a free generated name in tx: like Docker, a digit is
// added after a clash, and after a few clashes the short ID is the name.
func generateName(tx *bolt.Tx, id string) (string, error) {
	for try := range 10 {
		name := adjectives[rand.IntN(len(adjectives))] + "_" + surnames[rand.IntN(len(surnames))]
		if try > 0 {
			name += fmt.Sprint(rand.IntN(10))
		}
		if nameFree(tx, name) == nil {
			return name, nil
		}
	}
	return id[:12], nameFree(tx, id[:12])
}
