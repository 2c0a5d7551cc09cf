package pmem

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	osexec "os/exec"
	"regexp"
	"strings"

	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/report"
	"github.com/carve-csi/carve/pkg/exec"
)

// The fsdax layout of a namespace, as the kernel computes it
// (drivers/nvdimm/pfn_devs.c, nd_pfn_init): an 8 KiB info block, then with
// map=dev one 64-byte struct page per 4 KiB page, the whole reservation
// rounded up to the pfn alignment. What is left is the usable size, the size
// of /dev/pmemX and what `ndctl list` reports as the namespace "size".
const (
	// PfnAlign is the fsdax alignment carve asks for (-a 2M): huge-page
	// mappings, and the granularity of usable sizes.
	PfnAlign        = 2 << 20
	infoBlockBytes  = 8 << 10
	pageBytes       = 4 << 10
	structPageBytes = 64
)

// UsableBytes is the usable size of an fsdax namespace (map=dev, PfnAlign)
// of raw bytes; <= 0 when raw is too small to hold the layout.
func UsableBytes(raw int64) int64 {
	if raw <= infoBlockBytes {
		return 0
	}
	npfns := (raw - infoBlockBytes) / pageBytes
	return raw - backend.AlignUp(infoBlockBytes+structPageBytes*npfns, PfnAlign)
}

// RawBytes is the smallest raw namespace size, a multiple of regionAlign,
// whose usable size is at least want; math.MaxInt64 (which no region has
// free) when no int64 size holds that much.
func RawBytes(want, regionAlign int64) int64 {
	if regionAlign < 1 {
		regionAlign = 1
	}
	if want <= 0 {
		return 0
	}
	// The layout takes more than 1/64 of the raw size, so every raw size that
	// holds want is above want*64/63: start at that bound, aligned, and step
	// up. The reservation is less than 1/64 + PfnAlign + the info block, so
	// that takes at most about (PfnAlign+infoBlockBytes)/regionAlign + 2 steps.
	// (Starting at want+want/64 and stepping from there took up to 2^39 steps
	// for sizes near 2^63, and wrapped around; found by FuzzRawBytes.)
	if want > math.MaxInt64-want/63 {
		return math.MaxInt64
	}
	lower := want + want/63
	q := (lower-1)/regionAlign + 1
	if q > math.MaxInt64/regionAlign {
		return math.MaxInt64
	}
	raw := q * regionAlign
	for UsableBytes(raw) < want {
		if raw > math.MaxInt64-regionAlign {
			return math.MaxInt64
		}
		raw += regionAlign
	}
	return raw
}

// nsJSON is one namespace in `ndctl list -N -v [-i]` output.
type nsJSON struct {
	Dev      string `json:"dev"`
	Mode     string `json:"mode"`
	Map      string `json:"map"`
	Size     int64  `json:"size"`
	UUID     string `json:"uuid"`     // fsdax: the pfn device's uuid; otherwise the namespace's
	RawUUID  string `json:"raw_uuid"` // fsdax with -v: the namespace's own uuid
	Align    int64  `json:"align"`
	Blockdev string `json:"blockdev"`
	Name     string `json:"name"`
	State    string `json:"state"` // "disabled" for idle namespaces (-i)
}

// namespaceUUID is the uuid of the namespace itself, the one carve sets with -u.
func (n *nsJSON) namespaceUUID() string {
	if n.RawUUID != "" {
		return n.RawUUID
	}
	return n.UUID
}

// regionJSON is one region in `ndctl list -R` output.
type regionJSON struct {
	Dev                string   `json:"dev"`
	Size               int64    `json:"size"`
	Align              int64    `json:"align"`
	AvailableSize      int64    `json:"available_size"`
	MaxAvailableExtent int64    `json:"max_available_extent"`
	Type               string   `json:"type"`
	Namespaces         []nsJSON `json:"namespaces"`
}

// blockdevPattern is a block device name as the kernel makes them (pmem0,
// pmem0.1, pmem0s): the node directly under /dev, never a path.
var blockdevPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// check refuses what no ndctl prints: negative sizes, and a block device
// that is a path (carve wipes, formats and mounts /dev/<blockdev>).
func (n *nsJSON) check() error {
	if n.Size < 0 || n.Align < 0 {
		return fmt.Errorf("namespace %q: negative size %d or align %d", n.Dev, n.Size, n.Align)
	}
	if n.Blockdev != "" && !blockdevPattern.MatchString(n.Blockdev) {
		return fmt.Errorf("namespace %q: block device %q is not a device name", n.Dev, n.Blockdev)
	}
	return nil
}

func (r *regionJSON) check() error {
	if r.Size < 0 || r.Align < 0 || r.AvailableSize < 0 || r.MaxAvailableExtent < 0 {
		return fmt.Errorf("region %q: negative size %d, align %d, available size %d or largest extent %d",
			r.Dev, r.Size, r.Align, r.AvailableSize, r.MaxAvailableExtent)
	}
	for i := range r.Namespaces {
		if err := r.Namespaces[i].check(); err != nil {
			return fmt.Errorf("region %q: %w", r.Dev, err)
		}
	}
	return nil
}

func checkRegions(rs []regionJSON) ([]regionJSON, error) {
	for i := range rs {
		if err := rs[i].check(); err != nil {
			return nil, fmt.Errorf("ndctl list output: %w", err)
		}
	}
	return rs, nil
}

// parseRegions reads `ndctl list -R[N]` output. ndctl prints nothing when no
// region matches, an array of regions when none of them has a namespace to
// show, and {"regions":[...]} otherwise.
func parseRegions(out []byte) ([]regionJSON, error) {
	var raw json.RawMessage
	ok, err := decodeJSON("list", out, &raw)
	if err != nil {
		return nil, fmt.Errorf("parsing ndctl list output: %w", err)
	}
	if !ok {
		return nil, nil
	}
	if raw[0] == '[' {
		var rs []regionJSON
		if err := json.Unmarshal(raw, &rs); err != nil {
			return nil, fmt.Errorf("parsing ndctl list output: %w", err)
		}
		return checkRegions(rs)
	}
	var obj struct {
		Regions []regionJSON `json:"regions"`
		regionJSON
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("parsing ndctl list output: %w", err)
	}
	if obj.Regions == nil && obj.Dev != "" {
		return checkRegions([]regionJSON{obj.regionJSON}) // a single region printed as an object
	}
	return checkRegions(obj.Regions)
}

// parseNamespace reads the JSON object `ndctl create-namespace` prints.
func parseNamespace(out []byte) (*nsJSON, error) {
	var ns nsJSON
	if _, err := decodeJSON("create-namespace", out, &ns); err != nil {
		return nil, fmt.Errorf("parsing ndctl create-namespace output %q: %w", out, err)
	}
	if ns.Dev == "" {
		return nil, fmt.Errorf("ndctl create-namespace printed no namespace: %q", out)
	}
	if err := ns.check(); err != nil {
		return nil, fmt.Errorf("ndctl create-namespace output: %w", err)
	}
	return &ns, nil
}

// decodeJSON unmarshals the JSON ndctl printed into v, ignoring (and
// logging) notices printed around it; ok is false when there was no JSON.
func decodeJSON(cmd string, out []byte, v any) (ok bool, err error) {
	noise, ok, err := report.Decode(out, v)
	if len(noise) > 0 {
		klog.InfoS("ndctl printed text around its JSON output; ignored it", "command", cmd, "lines", noise)
	}
	return ok, err
}

// volumeUUID is the namespace uuid carve gives volume id: derived from the
// owner (driver name), the id and whether it is an inline ephemeral volume, so
// that the device alone says whose it is and what it is. The version nibble is
// 8 (RFC 9562 custom), the variant RFC 4122.
func volumeUUID(owner, id string, ephemeral bool) string {
	kind := "volume"
	if ephemeral {
		kind = "ephemeral"
	}
	return derivedUUID("carve.owner=" + owner + "\x00" + kind + "\x00" + id)
}

// lvmUUID is the uuid of the namespace that carries an lvm-on-pmem volume group.
func lvmUUID(owner, region, name string) string {
	return derivedUUID("carve.owner=" + owner + "\x00lvm\x00" + region + "\x00" + name)
}

func derivedUUID(s string) string {
	h := sha256.Sum256([]byte(s))
	b := h[:16]
	b[6] = b[6]&0x0f | 0x80
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func sameUUID(a, b string) bool {
	return strings.EqualFold(strings.TrimSpace(a), strings.TrimSpace(b))
}

// ndctl runs one ndctl command.
func ndctl(ctx context.Context, r exec.Runner, args ...string) ([]byte, error) {
	return r.Run(ctx, "ndctl", args...)
}

// toolMissing reports whether err says the tool could not be started at all:
// not installed here, or (behind an nsenter prefix) not on the host.
func toolMissing(err error) bool {
	if errors.Is(err, osexec.ErrNotFound) {
		return true
	}
	code := exec.ExitCode(err)
	s := strings.ToLower(exec.Stderr(err))
	return code == 127 || (code == -1 && strings.Contains(s, "no such file")) ||
		strings.Contains(s, "failed to execute ndctl")
}

// ndctlRule is one failure ndctl reports: a whole line of its stderr (as
// captured in testdata/ or printed by ndctl's cmd_create_namespace /
// cmd_destroy_namespace: "failed to <verb> namespace: <strerror>"), the
// operations it applies to ("" for any), and what it means.
type ndctlRule struct {
	op       string
	line     *regexp.Regexp
	sentinel error
	hint     string
}

var ndctlRules = []ndctlRule{
	// create-nospace.txt
	{"create", regexp.MustCompile(`^failed to create namespace: No space left on device$`), backend.ErrNoSpace, ""},
	// create-enxio.txt: the region exists (carve names it with -r after
	// reading it from sysfs); the kernel did not enable the new namespace's
	// fsdax (pfn) device. Retrying the same region fails the same way, so the
	// pool is degraded rather than unavailable (which callers retry).
	{"create", regexp.MustCompile(`^failed to create namespace: No such device or address$`), backend.ErrDegraded,
		" (the kernel did not enable the namespace's fsdax device; see the kernel log)"},
	{"create", regexp.MustCompile(`label-less namespaces do not support sub-dividing a region`), backend.ErrDegraded,
		" (the region has no namespace labels; initialize them once with: ndctl disable-region <region>; ndctl init-labels -f all; ndctl enable-region <region>)"},
	// delete-missing.txt
	{"", regexp.MustCompile(`^error destroying namespaces: No such device or address$`), backend.ErrNotFound, ""},
	// delete-busy.txt: mounted, or held by device-mapper (an lvm-on-pmem PV).
	{"", regexp.MustCompile(`^error destroying namespaces: Device or resource busy$`), backend.ErrInUse,
		" (the device is in use: mounted, or held by device-mapper)"},
	{"", regexp.MustCompile(`failed exclusive open`), backend.ErrInUse,
		" (the device is in use: mounted, or held by device-mapper)"},
}

// mapError turns a failed ndctl command into an error wrapping the matching
// backend sentinel and the *exec.Error (command line, exit code, stderr). The
// cause is read from ndctl's own error lines (ndctlRules), never from a
// strerror alone: ndctl's exit codes are negated errnos truncated to a byte
// and its messages end in strerror, and the same errno means different
// things in different steps. A tool that cannot start at all is
// ErrUnavailable; anything unknown wraps no sentinel (codes.Internal).
func mapError(op, what string, err error) error {
	if toolMissing(err) {
		return fmt.Errorf("pmem: %s %s: ndctl is not available on this node (install ndctl): %w: %w", op, what, backend.ErrUnavailable, err)
	}
	if exec.ExitCode(err) > 0 {
		for _, line := range strings.Split(exec.Stderr(err), "\n") {
			line = strings.TrimSpace(line)
			for _, r := range ndctlRules {
				if (r.op == "" || r.op == op) && line != "" && r.line.MatchString(line) {
					return fmt.Errorf("pmem: %s %s%s: %w: %w", op, what, r.hint, r.sentinel, err)
				}
			}
		}
	}
	return fmt.Errorf("pmem: %s %s: %w", op, what, err)
}
