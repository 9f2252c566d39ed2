package thinp

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenRestored opens metadata that thin_restore wrote (as the kernel
// would lay it out: unshared trees, counts above 2 in the reference-count
// tree) and works on it: the reader and writer agree with the tools.
func TestOpenRestored(t *testing.T) {
	needTool(t, "thin_restore")
	dir := t.TempDir()
	meta, data := filepath.Join(dir, "meta"), filepath.Join(dir, "data")
	const dataBlocks = 20000
	var xml strings.Builder
	fmt.Fprintf(&xml, `<superblock uuid="" time="7" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="%d">`+"\n", dataBlocks)
	// Devices 0, 1 and 7 map the same data blocks (counts of 3), device 1
	// has blocks of its own; 3000 mappings make two-level trees.
	m := model{0: {}, 1: {}, 7: {}}
	device := func(id uint32, ctime uint32, mapping func(vb uint64) (uint64, bool)) {
		var lines []string
		for vb := range uint64(6000) {
			if db, ok := mapping(vb); ok {
				lines = append(lines, fmt.Sprintf(`<single_mapping origin_block="%d" data_block="%d" time="%d"/>`, vb, db, ctime))
				m[id][vb] = make([]uint64, 16)
			}
		}
		fmt.Fprintf(&xml, `<device dev_id="%d" mapped_blocks="%d" transaction="1" creation_time="%d" snap_time="5">`+"\n%s\n</device>\n",
			id, len(lines), ctime, strings.Join(lines, "\n"))
	}
	device(0, 0, func(vb uint64) (uint64, bool) { return vb / 2, vb%2 == 0 })
	device(1, 2, func(vb uint64) (uint64, bool) {
		if vb%2 == 1 && vb < 400 {
			return 10000 + vb, true
		}
		return vb / 2, vb%2 == 0
	})
	device(7, 4, func(vb uint64) (uint64, bool) { return vb / 2, vb%2 == 0 && vb%3 != 0 })
	xml.WriteString("</superblock>\n")
	xmlPath := filepath.Join(dir, "pool.xml")
	if err := os.WriteFile(xmlPath, []byte(xml.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(meta, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(meta, 16<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("thin_restore", "-i", xmlPath, "-o", meta).CombinedOutput(); err != nil {
		t.Fatalf("thin_restore: %v\n%s", err, out)
	}
	if err := os.WriteFile(data, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(data, dataBlocks<<16); err != nil {
		t.Fatal(err)
	}

	p, err := Open(meta, data)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, id := range p.Devices() {
		if err := p.SetDeviceSize(id, 6000<<16); err != nil {
			t.Fatal(err)
		}
	}
	if st := p.Status(); st.TransactionID != 3 || st.TotalData != dataBlocks || st.UsedData != 3000+200 {
		t.Fatalf("status of the restored pool: %+v", st)
	}
	checkTools(t, p, m, meta)

	// Writes to blocks provisioned before the snapshot time copy them.
	m.write(t, p, 7, 2*16, 16, 100)
	m.write(t, p, 1, 0, 10*16, 200)
	if err := p.CreateSnap(9, 7); err != nil {
		t.Fatal(err)
	}
	m[9] = m.clone()[7]
	if err := p.Delete(0); err != nil {
		t.Fatal(err)
	}
	delete(m, 0)
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	checkTools(t, p, m, meta)
	m.check(t, p, 100)
}
