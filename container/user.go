package container

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/strata-storage/strata/errdefs"
)

// configUser returns the User of c's config, "" for none.
func configUser(c Container) (string, error) {
	var config struct{ User string }
	if len(c.Config) > 0 {
		if err := json.Unmarshal(c.Config, &config); err != nil {
			return "", fmt.Errorf("container %s: config: %w", c.Name, err)
		}
	}
	return config.User, nil
}

// lookupUser resolves a config's User, "user[:group]" with names or
// numbers, in /etc/passwd and /etc/group of the container mounted at root,
// as a runtime does for the process it starts: a number needs no entry, a
// name does, and a user given without a group takes its passwd entry's
// group, or 0.
func lookupUser(root, spec string) (uid, gid int, err error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	uid, gid, err = lookupEntry(root, "/etc/passwd", "user", userPart)
	if err != nil || !hasGroup {
		return uid, gid, err
	}
	gid, _, err = lookupEntry(root, "/etc/group", "group", groupPart)
	return uid, gid, err
}

// lookupEntry finds the line of file naming, or numbering, id: name:x:id:...
// It returns the id and the field after it (a passwd entry's group).
func lookupEntry(root, file, kind, id string) (n, next int, err error) {
	number, numErr := strconv.Atoi(id)
	if numErr == nil && number < 0 {
		return 0, 0, fmt.Errorf("invalid %s %q: %w", kind, id, errdefs.ErrInvalid)
	}
	entries, err := readEntries(root, file)
	if err != nil {
		return 0, 0, err
	}
	for _, fields := range entries {
		entry, err := strconv.Atoi(fields[2])
		if err != nil || (fields[0] != id && (numErr != nil || entry != number)) {
			continue
		}
		if len(fields) > 3 {
			next, _ = strconv.Atoi(fields[3])
		}
		return entry, next, nil
	}
	if numErr == nil {
		return number, 0, nil
	}
	return 0, 0, fmt.Errorf("unable to find %s %s: no matching entries in %s file: %w", kind, id, strings.TrimPrefix(file, "/etc/"), errdefs.ErrInvalid)
}

// readEntries returns the colon-separated lines of file in the container
// mounted at root that have at least three fields, none when it is absent.
func readEntries(root, file string) ([][]string, error) {
	p, err := securejoin.SecureJoin(root, file)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var entries [][]string
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		if fields := strings.Split(lines.Text(), ":"); len(fields) >= 3 && !strings.HasPrefix(fields[0], "#") {
			entries = append(entries, fields)
		}
	}
	return entries, lines.Err()
}
