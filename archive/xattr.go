package archive

import (
	"bytes"
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// listXattrs returns the extended attributes of the file at full, without
// following a symlink. A file system without xattrs has none.
func listXattrs(full string) (map[string]string, error) {
	names, err := readXattr(full, func(buf []byte) (int, error) { return unix.Llistxattr(full, buf) })
	if errors.Is(err, unix.ENOTSUP) || len(names) == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, os.NewSyscallError("llistxattr "+full, err)
	}
	xattrs := make(map[string]string)
	for name := range bytes.SplitSeq(bytes.TrimSuffix(names, []byte{0}), []byte{0}) {
		value, err := getXattr(full, string(name))
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		xattrs[string(name)] = string(value)
	}
	return xattrs, nil
}

// getXattr returns one extended attribute of the file at full.
func getXattr(full, name string) ([]byte, error) {
	value, err := readXattr(full, func(buf []byte) (int, error) { return unix.Lgetxattr(full, name, buf) })
	if err != nil {
		return nil, os.NewSyscallError("lgetxattr "+name, err)
	}
	return value, nil
}

// readXattr calls read first for the size, then with a buffer of that size,
// again if the attribute grew in between.
func readXattr(full string, read func([]byte) (int, error)) ([]byte, error) {
	for {
		size, err := read(nil)
		if err != nil || size == 0 {
			return nil, err
		}
		buf := make([]byte, size)
		n, err := read(buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}
