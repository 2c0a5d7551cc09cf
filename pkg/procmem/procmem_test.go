package procmem

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Lines as /proc/PID/maps prints them for a static Go binary (carve-csi, Linux 6.18).
const sampleMaps = `00400000-018a1000 r-xp 00000000 fe:00 10028162                           /tmp/fp/carve
018a1000-02ee0000 r--p 014a1000 fe:00 10028162                           /tmp/fp/carve
02ee0000-02f81000 rw-p 02ae0000 fe:00 10028162                           /tmp/fp/carve
02f81000-04fcd000 rw-p 00000000 00:00 0 
325148000000-325149c00000 ---p 00000000 00:00 0 
7ffd1b1e5000-7ffd1b206000 rw-p 00000000 00:00 0                          [stack]
7ffd1b3f2000-7ffd1b3f6000 r--p 00000000 00:00 0                          [vvar]
7ffd1b3f6000-7ffd1b3f8000 r-xp 00000000 00:00 0                          [vdso]
7f0000000000-7f0000001000 r--p 00000000 fe:00 10028163                   /tmp/other file
`

func TestParseMapsAndReleasable(t *testing.T) {
	maps, err := ParseMaps(strings.NewReader(sampleMaps))
	if err != nil {
		t.Fatal(err)
	}
	if len(maps) != 9 || maps[0].Start != 0x400000 || maps[0].End != 0x18a1000 || maps[0].Inode != 10028162 ||
		maps[0].Dev != unix.Mkdev(0xfe, 0) || maps[0].Path != "/tmp/fp/carve" || maps[8].Path != "/tmp/other file" || maps[3].Path != "" {
		t.Fatalf("parsed %+v", maps)
	}
	// Only the binary's code and read-only data: never its writable data, other files or anonymous memory.
	got := Releasable(maps, unix.Mkdev(0xfe, 0), 10028162)
	if len(got) != 2 || got[0].Perms != "r-xp" || got[1].Perms != "r--p" || got[1].Start != 0x18a1000 {
		t.Fatalf("releasable %+v", got)
	}
	if got := Releasable(maps, unix.Mkdev(0xfe, 1), 10028162); len(got) != 0 {
		t.Fatalf("another device's inode matched: %+v", got)
	}
	for _, bad := range []string{"00400000 r-xp 0 fe:00 1 /x\n", "zz-01 r-xp 0 fe:00 1\n", "1-2 r-xp 0 fe00 1\n", "1-2 r-xp\n"} {
		if _, err := ParseMaps(strings.NewReader(bad)); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseMaps(%q) = %v, want a one-line error", bad, err)
		}
	}
}

// big is a 4 MiB string constant: it lives in the executable's read-only
// data, and nothing but this test reads it.
const (
	c0  = "carve procmem test: read-only data of the executable."
	c1  = c0 + c0
	c2  = c1 + c1
	c3  = c2 + c2
	c4  = c3 + c3
	c5  = c4 + c4
	c6  = c5 + c5
	c7  = c6 + c6
	c8  = c7 + c7
	c9  = c8 + c8
	c10 = c9 + c9
	c11 = c10 + c10
	c12 = c11 + c11
	c13 = c12 + c12
	c14 = c13 + c13
	c15 = c14 + c14
	c16 = c15 + c15
	big = c16 + c16
)

// residentPages counts the pages of s that are mapped into this process
// (present bits of /proc/self/pagemap, readable without privileges).
func residentPages(t *testing.T, s string) (resident, total int) {
	t.Helper()
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := uintptr(os.Getpagesize())
	start := uintptr(unsafe.Pointer(unsafe.StringData(s))) &^ (page - 1)
	end := uintptr(unsafe.Pointer(unsafe.StringData(s))) + uintptr(len(s))
	buf := make([]byte, 8*((end-start+page-1)/page))
	if _, err := f.ReadAt(buf, int64(start/page*8)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(buf); i += 8 {
		total++
		if binary.LittleEndian.Uint64(buf[i:])>>63 == 1 {
			resident++
		}
	}
	return resident, total
}

// The executable's read-only data that nothing uses any more leaves the
// process's resident set, and reading it again brings it back unchanged.
func TestReleaseExecutable(t *testing.T) {
	sum := func() (n int) {
		for i := 0; i < len(big); i += 512 {
			n += int(big[i])
		}
		return n
	}
	want := sum()
	before, total := residentPages(t, big)
	n, err := ReleaseExecutable()
	if err != nil {
		t.Fatal(err)
	}
	after, _ := residentPages(t, big)
	t.Logf("advised %d bytes of address space; resident pages of a %d-page constant: %d before, %d after", n, total, before, after)
	if before < total*9/10 || after > total/10 {
		t.Fatalf("resident pages of the constant: %d before, %d after, of %d", before, after, total)
	}
	if got := sum(); got != want {
		t.Fatalf("the constant reads %d after the release, %d before", got, want)
	}
	if back, _ := residentPages(t, big); back < total*9/10 {
		t.Fatalf("only %d of %d pages mapped back after reading", back, total)
	}
}
