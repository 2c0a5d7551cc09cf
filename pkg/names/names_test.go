package names

import (
	"regexp"
	"strings"
	"testing"
)

// Golden values: device names are the state of record, so the mapping must
// never change between versions.
func TestVolumeIDGolden(t *testing.T) {
	golden := map[string]string{
		"pvc-0b7e4a6c-1b9e-4c39-9f43-2f1d3a7c9e11": "carve-pvc-0b7e4a6c-1b9e-4c39-9f43-2f1d3a7c9e11-cf65ae20e20784fc",
		"csi-4f1c2e":  "carve-csi-4f1c2e-9f3de1168e2d8824",
		"":            "carve-e3b0c44298fc1c14",
		"Ünïcödé/ ^%": "carve-n-c-d-7f935a20e0136ad2",
	}
	for name, want := range golden {
		if got := VolumeID(name); got != want {
			t.Errorf("VolumeID(%q) = %q, want %q", name, got, want)
		}
	}
}

var lvmName = regexp.MustCompile(`^[a-zA-Z0-9+_.-]+$`)

func checkID(t *testing.T, name string) {
	t.Helper()
	id := VolumeID(name)
	if len(id) > MaxLen || len(id) > 63 {
		t.Fatalf("VolumeID(%q) = %q: %d bytes, above the limit", name, id, len(id))
	}
	if !lvmName.MatchString(id) || strings.HasPrefix(id, "-") {
		t.Fatalf("VolumeID(%q) = %q is not a valid LV name", name, id)
	}
	if !IsVolumeID(id) {
		t.Fatalf("IsVolumeID(VolumeID(%q) = %q) is false", name, id)
	}
	if id != VolumeID(name) {
		t.Fatalf("VolumeID(%q) is not deterministic", name)
	}
}

func TestVolumeIDShape(t *testing.T) {
	for _, name := range []string{"", "a", "pvc-1", "--", "UPPER_case.Name", strings.Repeat("x", 500), "日本語", "a/b\\c d\x00e", "_snapshot", "pvmove"} {
		checkID(t, name)
	}
	if IsVolumeID("csi-123") || IsVolumeID("carve-XYZ-0123456789abcdef") || IsVolumeID("carve--0123456789abcdef") {
		t.Fatal("IsVolumeID accepts ids VolumeID never makes")
	}
	if VolumeID("a") == VolumeID("A") {
		t.Fatal("names differing only in case map to one id")
	}
}

func TestValidVGName(t *testing.T) {
	for s, want := range map[string]bool{
		"carve": true, "vg_0.x+y": true, "-vg": false, ".": false, "..": false, "": false, "vg/x": false, "vg x": false,
		strings.Repeat("v", 127): true, strings.Repeat("v", 128): false,
	} {
		if got := ValidVGName(s); got != want {
			t.Errorf("ValidVGName(%q) = %v, want %v", s, got, want)
		}
	}
}

// TestSnapshotIDShape: snapshot ids are valid LV names within MaxLen, never
// volume ids (a DeleteVolume with a snapshot id must touch nothing), stable.
func TestSnapshotIDShape(t *testing.T) {
	for _, name := range []string{"", "snapshot-1", "snapshot-6f1e0c38-8d0b-4a4e-9d7e-3c5b2a1f0e9d", strings.Repeat("Ab/", 60), "ünïcode"} {
		id := SnapshotID(name)
		if !IsSnapshotID(id) || IsVolumeID(id) || len(id) > MaxLen || !lvmName.MatchString(id) {
			t.Errorf("SnapshotID(%q) = %q: snapshot id %v, volume id %v, %d bytes", name, id, IsSnapshotID(id), IsVolumeID(id), len(id))
		}
		if IsSnapshotID(VolumeID(name)) {
			t.Errorf("VolumeID(%q) = %q passes IsSnapshotID", name, VolumeID(name))
		}
	}
	if got := SnapshotID("snapshot-1"); got != "carvesnap-snapshot-1-"+VolumeID("snapshot-1")[len("carve-snapshot-1-"):] {
		t.Errorf("SnapshotID(snapshot-1) = %q: want the volume id's hash", got)
	}
}
