// Package names maps CSI volume names to device names that are valid everywhere
// carve uses them: LVM LV names, ndctl namespace names and Kubernetes object names.
package names

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
)

const (
	prefix      = "carve-"
	maxReadable = 40
	hashLen     = 16
	// MaxLen bounds every id: 6 + 40 + 1 + 16. ndctl names hold 63 bytes, LVM 127,
	// Kubernetes object names 253.
	MaxLen = len(prefix) + maxReadable + 1 + hashLen
)

var idPattern = regexp.MustCompile(`^carve-([a-z0-9]+(-[a-z0-9]+)*-)?[0-9a-f]{16}$`)

// VolumeID derives the device name for a CSI volume name. It is stable across
// versions (tests pin golden values), injective up to a 64-bit hash, and
// contains only [a-z0-9-], starting with a letter.
func VolumeID(csiName string) string {
	sum := sha256.Sum256([]byte(csiName))
	readable := readablePart(csiName)
	id := prefix
	if readable != "" {
		id += readable + "-"
	}
	return id + hex.EncodeToString(sum[:hashLen/2])
}

// IsVolumeID reports whether s has the shape of an id VolumeID produces.
// It says nothing about whether the volume exists.
func IsVolumeID(s string) bool {
	return len(s) <= MaxLen && idPattern.MatchString(s)
}

// snapshotPrefix starts every snapshot id. It differs from a volume id's
// "carve-" in its sixth byte, so no snapshot id is a volume id (IsVolumeID)
// and a DeleteVolume given a snapshot's id touches nothing.
const snapshotPrefix = "carvesnap-"

// maxSnapshotReadable keeps snapshot ids within MaxLen, as volume ids.
const maxSnapshotReadable = MaxLen - len(snapshotPrefix) - 1 - hashLen

var snapshotPattern = regexp.MustCompile(`^carvesnap-([a-z0-9]+(-[a-z0-9]+)*-)?[0-9a-f]{16}$`)

// SnapshotID derives the device name (a thin snapshot LV) for a CSI
// snapshot name: "carvesnap-<readable>-<16 hex>", at most MaxLen bytes,
// [a-z0-9-], stable across versions like VolumeID.
func SnapshotID(csiName string) string {
	sum := sha256.Sum256([]byte(csiName))
	readable := readablePart(csiName)
	if len(readable) > maxSnapshotReadable {
		readable = strings.TrimRight(readable[:maxSnapshotReadable], "-")
	}
	id := snapshotPrefix
	if readable != "" {
		id += readable + "-"
	}
	return id + hex.EncodeToString(sum[:hashLen/2])
}

// IsSnapshotID reports whether s has the shape of an id SnapshotID produces.
func IsSnapshotID(s string) bool {
	return len(s) <= MaxLen && snapshotPattern.MatchString(s)
}

// readablePart keeps a human-recognizable piece of the name: lowercase
// alphanumerics, runs of anything else collapsed to one '-', bounded length.
func readablePart(name string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(name) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			need := 1
			if dash && b.Len() > 0 {
				need = 2
			}
			if b.Len()+need > maxReadable {
				break
			}
			if need == 2 {
				b.WriteByte('-')
			}
			dash = false
			b.WriteRune(r)
			continue
		}
		dash = true
	}
	return strings.Trim(b.String(), "-")
}

// vgPattern is the volume group names lvm accepts (lvm(8)); "." and ".." are
// refused separately.
var vgPattern = regexp.MustCompile(`^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$`)

// ValidVGName reports whether lvm accepts s as a volume group name.
func ValidVGName(s string) bool { return vgPattern.MatchString(s) && s != "." && s != ".." }
