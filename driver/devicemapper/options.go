package devicemapper

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/strata-storage/strata/driver"
	"github.com/strata-storage/strata/errdefs"
	"github.com/strata-storage/strata/thinp"
)

// options are the driver's, in Docker's names (dm.*).
type options struct {
	baseSize       int64    // dm.basesize: the base device, and so every layer (10G)
	dataSize       int64    // dm.loopdatasize: the pool's data file (100G)
	metadataSize   int64    // dm.loopmetadatasize: the pool's metadata file (2G)
	blockSize      int64    // dm.blocksize: the pool's data block (64K)
	fs             string   // dm.fs: ext4 or xfs
	mkfsArgs       []string // dm.mkfsarg: more arguments for mkfs
	mountOpts      string   // dm.mountopt: more mount options
	minFreePercent int      // dm.min_free_space: refuse new devices below it (10%)
	// dm.blkdiscard is accepted and checked, and changes nothing: deleting
	// a device always frees its blocks in the pool.
}

func parseOptions(m map[string]string) (options, error) {
	o := options{
		baseSize:       10 << 30,
		dataSize:       thinp.DefaultDataSize,
		metadataSize:   thinp.DefaultMetadataSize,
		blockSize:      thinp.DefaultBlockSize,
		fs:             "ext4",
		minFreePercent: 10,
	}
	if err := driver.CheckOptions(name, m, "dm.basesize", "dm.loopdatasize", "dm.loopmetadatasize",
		"dm.blocksize", "dm.fs", "dm.mkfsarg", "dm.mountopt", "dm.min_free_space", "dm.blkdiscard"); err != nil {
		return o, err
	}
	for key, value := range m {
		var err error
		switch key {
		case "dm.basesize":
			o.baseSize, err = parseSize(value)
		case "dm.loopdatasize":
			o.dataSize, err = parseSize(value)
		case "dm.loopmetadatasize":
			o.metadataSize, err = parseSize(value)
		case "dm.blocksize":
			o.blockSize, err = parseSize(value)
		case "dm.fs":
			if value != "ext4" && value != "xfs" {
				err = fmt.Errorf("want ext4 or xfs")
			}
			o.fs = value
		case "dm.mkfsarg":
			o.mkfsArgs = strings.Fields(value)
		case "dm.mountopt":
			o.mountOpts = value
		case "dm.min_free_space":
			o.minFreePercent, err = strconv.Atoi(strings.TrimSuffix(value, "%"))
			if err == nil && (o.minFreePercent < 0 || o.minFreePercent > 99) {
				err = fmt.Errorf("want 0%%..99%%")
			}
		case "dm.blkdiscard":
			_, err = strconv.ParseBool(value)
		}
		if err != nil {
			return o, fmt.Errorf("storage driver %s: option %s=%q: %v: %w", name, key, value, err, errdefs.ErrInvalid)
		}
	}
	return o, nil
}

// parseSize reads a size in bytes with an optional binary unit, as Docker's
// dm.* options take them: 512, 64K, 10G, 100GB.
func parseSize(s string) (int64, error) {
	num := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	shift := 0
	if i := len(num) - 1; i >= 0 && strings.IndexByte("KMGTP", num[i]) >= 0 {
		shift = 10 * (1 + strings.IndexByte("KMGTP", num[i]))
		num = num[:i]
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("not a size")
	}
	return n << shift, nil
}

// mkfsCommand is the command that formats a fresh device. Like Docker's, it
// leaves no inode table or journal for the kernel to initialise in the
// background, which would write into every snapshot later; but a fresh thin
// device reads as zeros, so ext4's are declared zeroed rather than written
// (assume_storage_prezeroed, e2fsprogs 1.47; with older ones, prezeroed
// false, they are written: through the pool, zeroing is unmapping).
// A kernel dm-thin device reports the pool's block size as its minimum and
// optimal I/O size, and mkfs aligns the file system's allocations to it; a
// loop device cannot carry that, so the hint is given here: whole blocks
// rewritten after a snapshot then need no copy of the shared block.
func (o *options) mkfsCommand(dev string, prezeroed bool) []string {
	args := []string{"mkfs." + o.fs}
	stride := fmt.Sprintf(",stride=%d,stripe_width=%d", o.blockSize/4096, o.blockSize/4096)
	switch {
	case o.fs == "ext4" && prezeroed:
		args = append(args, "-q", "-E", "nodiscard,"+prezeroedOption+"=1"+stride)
	case o.fs == "ext4":
		args = append(args, "-q", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"+stride)
	case o.fs == "xfs":
		args = append(args, "-q", "-f", "-K", "-d", fmt.Sprintf("su=%d,sw=1", o.blockSize))
	}
	return append(append(args, o.mkfsArgs...), dev)
}

const prezeroedOption = "assume_storage_prezeroed"

// mountData is the mount options of a layer's file system; xfs refuses a
// second mount of the same UUID, which every snapshot shares.
func (o *options) mountData() string {
	opts := []string{}
	if o.fs == "xfs" {
		opts = append(opts, "nouuid")
	}
	if o.mountOpts != "" {
		opts = append(opts, o.mountOpts)
	}
	return strings.Join(opts, ",")
}
