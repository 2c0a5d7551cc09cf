// Package procmem gives back the resident pages of the running binary's code
// and read-only data that start-up touched and serving does not need.
//
// carve-csi is one binary for both roles (about 45 MB of code and read-only
// data, most of it client-go, controller-runtime and the Kubernetes API types).
// At start every package's init runs once, and the kernel maps the pages
// around each piece of code and table it touches (64 KiB or more per fault):
// on carve-node these file pages were three quarters of its resident set
// (README, "Scale"). They are clean copies of the executable file, so
// dropping them from the process's page tables (madvise MADV_DONTNEED) loses
// nothing: the page cache keeps them, and code that runs again maps its pages
// back with a minor fault. The writable data segment and all anonymous memory
// (Go's heap, stacks) are never touched.
package procmem

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Mapping is one line of /proc/PID/maps.
type Mapping struct {
	Start, End uint64 // addresses, End exclusive
	Perms      string // e.g. "r-xp"
	Dev        uint64 // the file's device (unix.Mkdev of the line's major:minor)
	Inode      uint64
	Path       string
}

// ParseMaps reads /proc/PID/maps lines. Malformed lines are an error naming
// the line.
func ParseMaps(r io.Reader) ([]Mapping, error) {
	var out []Mapping
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			return nil, fmt.Errorf("procmem: maps line %q: too few fields", sc.Text())
		}
		start, end, ok := strings.Cut(f[0], "-")
		major, minor, ok2 := strings.Cut(f[3], ":")
		if !ok || !ok2 {
			return nil, fmt.Errorf("procmem: maps line %q: bad address or device", sc.Text())
		}
		var m Mapping
		var err [5]error
		m.Start, err[0] = strconv.ParseUint(start, 16, 64)
		m.End, err[1] = strconv.ParseUint(end, 16, 64)
		maj, e2 := strconv.ParseUint(major, 16, 32)
		mnr, e3 := strconv.ParseUint(minor, 16, 32)
		err[2], err[3] = e2, e3
		m.Inode, err[4] = strconv.ParseUint(f[4], 10, 64)
		for _, e := range err {
			if e != nil {
				return nil, fmt.Errorf("procmem: maps line %q: %w", sc.Text(), e)
			}
		}
		m.Dev = unix.Mkdev(uint32(maj), uint32(mnr))
		m.Perms = f[1]
		if len(f) > 5 {
			m.Path = strings.Join(f[5:], " ")
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// Releasable picks the mappings of the file (dev, inode) that are private and
// not writable: its code and read-only data. Writable ones (Go's data and
// bss) may hold changed pages that MADV_DONTNEED would throw away.
func Releasable(maps []Mapping, dev, inode uint64) []Mapping {
	var out []Mapping
	for _, m := range maps {
		if m.Inode == inode && m.Dev == dev && len(m.Perms) == 4 && m.Perms[1] == '-' && m.Perms[3] == 'p' {
			out = append(out, m)
		}
	}
	return out
}

// ReleaseExecutable drops the running executable's resident code and
// read-only data pages from this process (see the package comment) and
// returns how many bytes of address space it advised. Errors name the step
// (reading /proc/self/maps, stat of /proc/self/exe, madvise).
func ReleaseExecutable() (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return 0, fmt.Errorf("procmem: stat /proc/self/exe: %w", err)
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, fmt.Errorf("procmem: %w", err)
	}
	maps, err := ParseMaps(f)
	f.Close()
	if err != nil {
		return 0, err
	}
	var advised int64
	for _, m := range Releasable(maps, st.Dev, st.Ino) {
		// A raw syscall: the range is not Go memory, so no []byte for unix.Madvise.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(m.Start), uintptr(m.End-m.Start), unix.MADV_DONTNEED); errno != 0 {
			return advised, fmt.Errorf("procmem: madvise %x-%x %s: %w", m.Start, m.End, m.Perms, errno)
		}
		advised += int64(m.End - m.Start)
	}
	return advised, nil
}
