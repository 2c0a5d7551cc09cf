package lvm

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/exec"
)

// exitFailed is lvm's ECMD_FAILED, the exit code of every refusal below;
// any other code (a signal, a crash, a usage error) is never read as one of them.
const exitFailed = 5

// errorRule is one error lvm2 reports: a whole line of its stderr, as lvm
// 2.03 prints it in the C locale (recorded in testdata/), and the sentinel it
// means. Lines are matched whole, after trimming, so that no WARNING or
// notice that merely contains the words decides.
type errorRule struct {
	line     *regexp.Regexp
	sentinel error
	hint     string
}

var errorRules = []errorRule{
	// create-nospace.txt
	{regexp.MustCompile(`^Volume group "[^"]+" has insufficient free space \(\d+ extents\): \d+ required\.$`), backend.ErrNoSpace, ""},
	// expand-nospace.txt
	{regexp.MustCompile(`^Insufficient free space: \d+ extents needed, but only \d+ available$`), backend.ErrNoSpace, ""},
	// lvcreate -i N that fits the VG's free space but not N PVs' (striped.txt)
	{regexp.MustCompile(`^Insufficient suitable allocatable extents for logical volume \S+: \d+ more required$`), backend.ErrNoSpace, ""},
	// lvcreate -i N on fewer than N PVs (striped.txt)
	{regexp.MustCompile(`^Number of stripes \(\d+\) must not exceed number of physical volumes \(\d+\)$`), backend.ErrCannotStripe, ""},
	// create-exists.txt
	{regexp.MustCompile(`^Logical Volume "[^"]+" already exists in volume group "[^"]+"$`), backend.ErrExists, ""},
	// get-missing.txt, expand-missing-lvextend.txt
	{regexp.MustCompile(`^Failed to find logical volume "[^"]+"$`), backend.ErrNotFound, ""},
	{regexp.MustCompile(`^Logical volume \S+ not found in volume group \S+\.$`), backend.ErrNotFound, ""},
	// lvremove of an open LV (lib/metadata/lv_manip.c, lvm 2.03).
	{regexp.MustCompile(`^Logical volume \S+ (contains a filesystem )?in use\.$`), backend.ErrInUse, ""},
	{regexp.MustCompile(`^Can't remove open logical volume "[^"]+"\.?$`), backend.ErrInUse, ""},
	// create-missing-pv.txt, expand-missing-pv.txt: lvm refuses every
	// metadata change but lvremove while a PV of the VG is missing.
	{regexp.MustCompile(`^Cannot change VG \S+ while PVs are missing\.$`), backend.ErrDegraded,
		" (a physical volume of the volume group is missing: reattach it, or repair the VG with vgreduce --removemissing)"},
}

// mapError turns a failed lvm command into an error wrapping the matching
// backend sentinel and the *exec.Error (command line, exit code, stderr).
// The cause is read from lvm's exit code and its own error lines (errorRules);
// "Volume group "<our VG>" not found" is ErrUnavailable (the pool is gone).
// Anything else wraps no sentinel (codes.Internal at the gRPC boundary).
func (b *Backend) mapError(op, id string, err error) error {
	what := b.vg
	if id != "" {
		what += "/" + id
	}
	sentinel, hint := classify(err, b.vg)
	if sentinel == nil {
		return fmt.Errorf("lvm: %s %s: %w", op, what, err)
	}
	return fmt.Errorf("lvm: %s %s%s: %w: %w", op, what, hint, sentinel, err)
}

// classify returns the sentinel and hint for a failed lvm command on vg, or nil.
func classify(err error, vg string) (error, string) {
	if exec.ExitCode(err) != exitFailed {
		return nil, ""
	}
	for _, line := range strings.Split(exec.Stderr(err), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "WARNING:") {
			continue
		}
		if line == `Volume group "`+vg+`" not found` {
			return backend.ErrUnavailable, ""
		}
		for _, r := range errorRules {
			if r.line.MatchString(line) {
				return r.sentinel, r.hint
			}
		}
	}
	return nil, ""
}
