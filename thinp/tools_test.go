package thinp

import (
	"encoding/xml"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// dump is thin_dump's XML.
type dump struct {
	Time         uint32       `xml:"time,attr"`
	Transaction  uint64       `xml:"transaction,attr"`
	BlockSize    int64        `xml:"data_block_size,attr"`
	NrDataBlocks uint64       `xml:"nr_data_blocks,attr"`
	Devices      []dumpDevice `xml:"device"`
}

type dumpDevice struct {
	ID           uint32 `xml:"dev_id,attr"`
	MappedBlocks uint64 `xml:"mapped_blocks,attr"`
	Transaction  uint64 `xml:"transaction,attr"`
	CreationTime uint32 `xml:"creation_time,attr"`
	SnapTime     uint32 `xml:"snap_time,attr"`
	Ranges       []struct {
		OriginBegin uint64 `xml:"origin_begin,attr"`
		DataBegin   uint64 `xml:"data_begin,attr"`
		Length      uint64 `xml:"length,attr"`
		Time        uint32 `xml:"time,attr"`
	} `xml:"range_mapping"`
	Singles []struct {
		OriginBlock uint64 `xml:"origin_block,attr"`
		DataBlock   uint64 `xml:"data_block,attr"`
		Time        uint32 `xml:"time,attr"`
	} `xml:"single_mapping"`
}

// mappings returns vblock -> data block.
func (d dumpDevice) mappings() map[uint64]uint64 {
	m := map[uint64]uint64{}
	for _, r := range d.Ranges {
		for i := range r.Length {
			m[r.OriginBegin+i] = r.DataBegin + i
		}
	}
	for _, s := range d.Singles {
		m[s.OriginBlock] = s.DataBlock
	}
	return m
}

func needTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed (thin-provisioning-tools)", name)
	}
}

// thinCheck runs Debian's thin_check on a metadata file.
func thinCheck(t testing.TB, meta string) {
	t.Helper()
	needTool(t, "thin_check")
	out, err := exec.Command("thin_check", meta).CombinedOutput()
	if err != nil {
		t.Fatalf("thin_check %s: %v\n%s", meta, err, out)
	}
}

// thinDump runs thin_dump and parses its XML.
func thinDump(t testing.TB, meta string) dump {
	t.Helper()
	needTool(t, "thin_dump")
	out, err := exec.Command("thin_dump", meta).Output()
	if err != nil {
		t.Fatalf("thin_dump %s: %v\n%s", meta, err, out)
	}
	var d dump
	if err := xml.Unmarshal(out, &d); err != nil {
		t.Fatalf("thin_dump output: %v\n%s", err, out)
	}
	return d
}

// thinLs runs thin_ls and returns, per device, its mapped, exclusive and
// shared block counts.
func thinLs(t testing.TB, meta string) map[uint32][3]uint64 {
	t.Helper()
	needTool(t, "thin_ls")
	out, err := exec.Command("thin_ls", "--no-headers", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS", meta).Output()
	if err != nil {
		t.Fatalf("thin_ls %s: %v\n%s", meta, err, out)
	}
	devs := map[uint32][3]uint64{}
	for line := range strings.Lines(string(out)) {
		var id uint32
		var c [3]uint64
		if _, err := fmt.Sscan(line, &id, &c[0], &c[1], &c[2]); err != nil {
			t.Fatalf("thin_ls line %q: %v", line, err)
		}
		devs[id] = c
	}
	return devs
}
