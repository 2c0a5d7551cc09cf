package names

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/util/validation"
)

// lvmReserved are the substrings lvm refuses in LV names (lvm-string.c,
// _lvname_has_reserved_string) and the prefixes it refuses (snapshot, pvmove).
var (
	lvmReserved = []string{"_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_wcorig", "_iorig", "_idata", "_imeta",
		"_mimage", "_mlog", "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin"}
	lvmReservedPrefix = []string{"snapshot", "pvmove"}
)

// checkDeviceName asserts that s is usable as an LV name, an ndctl namespace
// name and a Kubernetes object name.
func checkDeviceName(t *testing.T, what, s string) {
	t.Helper()
	if len(s) > MaxLen || len(s) > 63 { // ndctl: 64-byte label field with its NUL
		t.Fatalf("%s = %q: %d bytes, above the limit", what, s, len(s))
	}
	if !lvmName.MatchString(s) || strings.HasPrefix(s, "-") || s == "." || s == ".." {
		t.Fatalf("%s = %q is not a valid LV name", what, s)
	}
	for _, r := range lvmReserved {
		if strings.Contains(s, r) {
			t.Fatalf("%s = %q contains %q, reserved by lvm", what, s, r)
		}
	}
	for _, p := range lvmReservedPrefix {
		if strings.HasPrefix(s, p) {
			t.Fatalf("%s = %q starts with %q, reserved by lvm", what, s, p)
		}
	}
	if errs := validation.IsDNS1123Label(s); len(errs) > 0 {
		t.Fatalf("%s = %q is not a Kubernetes object name: %v", what, s, errs)
	}
}

// FuzzVolumeID: every id is a valid device name and has the shape IsVolumeID
// accepts; distinct names give distinct ids; and the id is pinned for every
// input, not just the golden ones: the suffix is the first 8 bytes of the
// name's sha256, and the readable part spells the start of the name's
// lowercase alphanumerics.
func FuzzVolumeID(f *testing.F) {
	for _, s := range []string{"pvc-0b7e4a6c-1b9e-4c39-9f43-2f1d3a7c9e11", "csi-4f1c2e", "", "a b", strings.Repeat("z", 300),
		"snapshot", "pvmove0", "_tmeta", "..", "Ünïcödé/ ^%", "\u212a", "a\x00b"} {
		f.Add(s, s+"x")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		checkID(t, a)
		id := VolumeID(a)
		checkDeviceName(t, "VolumeID("+strings.ToValidUTF8(a, "?")+")", id)

		sum := sha256.Sum256([]byte(a))
		if want := hex.EncodeToString(sum[:8]); !strings.HasSuffix(id, "-"+want) {
			t.Fatalf("VolumeID(%q) = %q does not end in -%s", a, id, want)
		}
		readable := strings.TrimSuffix(strings.TrimPrefix(id, prefix), hex.EncodeToString(sum[:8]))
		readable = strings.TrimSuffix(readable, "-")
		var alnum strings.Builder
		for _, r := range strings.ToLower(a) {
			if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
				alnum.WriteRune(r)
			}
		}
		if !strings.HasPrefix(alnum.String(), strings.ReplaceAll(readable, "-", "")) {
			t.Fatalf("VolumeID(%q) = %q: readable part %q is not taken from the name's alphanumerics %q", a, id, readable, alnum.String())
		}
		if len(readable) > maxReadable || (alnum.Len() > 0 && readable == "") {
			t.Fatalf("VolumeID(%q) = %q: readable part %q (%d bytes, name has %q)", a, id, readable, len(readable), alnum.String())
		}

		if a != b && VolumeID(a) == VolumeID(b) {
			t.Fatalf("collision: %q and %q both map to %q", a, b, VolumeID(a))
		}
	})
}

// FuzzIsVolumeID: the backends put any id IsVolumeID accepts into lvm
// selections and ndctl arguments, so it must accept only valid device names
// (no selection operators, spaces or quotes), and it must accept every id
// VolumeID makes.
func FuzzIsVolumeID(f *testing.F) {
	for _, s := range []string{"carve-pvc-1-0123456789abcdef", "carve-0123456789abcdef", "carve--0123456789abcdef",
		"carve-a-0123456789abcdef\n", "carve-a b-0123456789abcdef", "carve-a-0123456789ABCDEF", VolumeID(strings.Repeat("x", 100))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !IsVolumeID(s) {
			return
		}
		if !utf8.ValidString(s) {
			t.Fatalf("IsVolumeID accepts invalid UTF-8 %q", s)
		}
		checkDeviceName(t, "IsVolumeID accepts "+s, s)
		if !strings.HasPrefix(s, prefix) || len(s) < len(prefix)+hashLen {
			t.Fatalf("IsVolumeID(%q): not carve-<...><16 hex>", s)
		}
	})
}
