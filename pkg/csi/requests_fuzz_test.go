package csi

import (
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/mounter"
)

func wantInvalid(t *testing.T, what string, err error) {
	t.Helper()
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("%s: %v, want InvalidArgument", what, err)
	}
}

// FuzzInlineAttributes: inline volume attributes are accepted only with the
// documented keys (size, fsType, pool with --allow-inline-pool, and what
// kubelet adds under csi.storage.k8s.io/), and every accepted set is a valid
// request: a positive size that is the quantity rounded up to whole bytes
// (never a wrapped or truncated one), ext4 or xfs, and the pool only when
// allowed. Anything else is InvalidArgument.
func FuzzInlineAttributes(f *testing.F) {
	for _, s := range [][4]string{
		{"size", "2Gi", "fsType", "xfs"}, {"size", "100Mi", "pool", "fast"}, {"size", "1e30"}, {"size", "8Ei"}, {"size", "8191Pi"}, {"size", "9223372036854775807"}, {"size", "0.9223372036854775807e19"},
		{"size", "9223372036854775808"}, {"size", "0.5", "fsType", "ext4"}, {"size", "-1Gi"}, {"size", "1m"},
		{"fsType", "btrfs"}, {"fsType", ""}, {"csi.storage.k8s.io/pod.name", "p"}, {"Size", "1Gi"}, {"dax", "true"},
		{"size", ""}, {"size", "1.5Pi", "size", "3"}, {"", ""},
	} {
		if s[2] == "" {
			s[2], s[3] = "csi.storage.k8s.io/ephemeral", "true" // what kubelet adds
		}
		f.Add(s[0], s[1], s[2], s[3], false)
		f.Add(s[0], s[1], s[2], s[3], true)
	}
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string, allowPool bool) {
		attrs := map[string]string{k1: v1, k2: v2}
		if k1 == "" && k2 == "" {
			attrs = nil
		}
		n := &Node{AllowInlinePool: allowPool}
		r, err := n.parseInline(attrs)
		if err != nil {
			wantInvalid(t, "parseInline", err)
			return
		}
		for k := range attrs {
			ok := k == attrSize || k == attrFSType || (k == ParamPool && allowPool) || strings.HasPrefix(k, reservedPrefix)
			if !ok {
				t.Fatalf("parseInline(%q, allowPool=%v) accepted attribute %q", attrs, allowPool, k)
			}
		}
		if r.fsType != "ext4" && r.fsType != "xfs" {
			t.Fatalf("parseInline(%q): fsType %q", attrs, r.fsType)
		}
		if r.pool != "" && (!allowPool || attrs[ParamPool] != r.pool) {
			t.Fatalf("parseInline(%q, allowPool=%v): pool %q", attrs, allowPool, r.pool)
		}
		if r.size <= 0 {
			t.Fatalf("parseInline(%q): size %d", attrs, r.size)
		}
		if v, ok := attrs[attrSize]; ok {
			// r.size is the smallest whole number of bytes >= the quantity,
			// compared exactly. (ParseQuantity itself clamps binary-suffixed
			// values such as 8Ei or 16Ei to MaxInt64; SizeFor refuses those.)
			parsed := resource.MustParse(v)
			q := parsed.AsDec()
			size, below := resource.NewQuantity(r.size, resource.DecimalSI).AsDec(), resource.NewQuantity(r.size-1, resource.DecimalSI).AsDec()
			if q.Cmp(size) > 0 || q.Cmp(below) <= 0 {
				t.Fatalf("parseInline: size %q became %d bytes", v, r.size)
			}
		} else if r.size != 1<<30 {
			t.Fatalf("parseInline(%q): default size %d", attrs, r.size)
		}
	})
}

// FuzzCreateVolumeRequest: CreateVolume's request checks accept only a named
// request with known parameters (pool; dax as a boolean; what the
// provisioner adds under csi.storage.k8s.io/), a supported filesystem, and a
// non-negative capacity range, and pass exactly those on, with a required
// size below the filesystem's minimum raised to it; a limit below that
// minimum is OutOfRange; anything else is InvalidArgument.
func FuzzCreateVolumeRequest(f *testing.F) {
	for _, s := range []struct {
		name, k1, v1, k2, v2, fs string
		req, lim                 int64
	}{
		{"pvc-1", "pool", "fast", "dax", "true", "ext4", 1 << 30, 0},
		{"pvc-2", "dax", "maybe", "", "", "xfs", 0, 1 << 20},
		{"pvc-3", "csi.storage.k8s.io/pvc/name", "x", "fsType", "xfs", "", -1, 0},
		{"", "pool", "", "", "", "btrfs", math.MaxInt64, math.MaxInt64},
		{"pvc-4", "dax", "F", "pool", "", "ext4", 5, -5},
		{"pvc-5", "stripes", "all", "stripeSize", "64Ki", "ext4", 1 << 30, 0},
		{"pvc-6", "stripes", "3", "stripeSize", "96Ki", "", 0, 0},
		{"pvc-7", "stripes", "1", "stripeSize", "1Mi", "", 0, 0},
	} {
		f.Add(s.name, s.k1, s.v1, s.k2, s.v2, s.fs, s.req, s.lim)
	}
	f.Fuzz(func(t *testing.T, name, k1, v1, k2, v2, fs string, required, limit int64) {
		params := map[string]string{k1: v1, k2: v2}
		req := &csi.CreateVolumeRequest{
			Name:       name,
			Parameters: params,
			VolumeCapabilities: []*csi.VolumeCapability{{
				AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
				AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
			}},
			CapacityRange: &csi.CapacityRange{RequiredBytes: required, LimitBytes: limit},
		}
		pool, striping, r, err := parseCreate(req)
		// The filesystem's minimum: a required size below it is raised to
		// it, a limit below it is OutOfRange.
		min := mounter.MinSizeBytes(fs)
		if status.Code(err) == codes.OutOfRange {
			if limit <= 0 || limit >= min || name == "" || required < 0 {
				t.Fatalf("parseCreate(%s, [%d, %d]): %v", fs, required, limit, err)
			}
			return
		}
		if err != nil {
			wantInvalid(t, "parseCreate", err)
			return
		}
		want := required
		if required > 0 && required < min {
			want = min
		}
		if name == "" || r.RequiredBytes != want || r.LimitBytes != limit || required < 0 || limit < 0 || (limit > 0 && limit < min) {
			t.Fatalf("parseCreate accepted name %q, %s range [%d, %d] as %+v", name, fs, required, limit, r)
		}
		if fs != "" && fs != "ext4" && fs != "xfs" {
			t.Fatalf("parseCreate accepted fsType %q", fs)
		}
		for k, v := range params {
			switch {
			case k == ParamPool:
				if pool != v {
					t.Fatalf("parseCreate(%q): pool %q", params, pool)
				}
			case k == ParamDAX:
				if v != "true" && v != "false" && v != "1" && v != "0" && v != "t" && v != "f" &&
					v != "TRUE" && v != "FALSE" && v != "True" && v != "False" && v != "T" && v != "F" {
					t.Fatalf("parseCreate accepted dax=%q", v)
				}
			case k == ParamStripes:
				if n, err := strconv.Atoi(v); v != "all" && (err != nil || n < 1 || n > 128 || striping.Stripes != n) ||
					v == "all" && striping.Stripes != backend.StripesAll {
					t.Fatalf("parseCreate accepted stripes=%q as %+v", v, striping)
				}
			case k == ParamStripeSize:
				if s := striping.StripeSizeBytes; s <= 0 || s&(s-1) != 0 || striping.Stripes == 0 || striping.Stripes == 1 {
					t.Fatalf("parseCreate accepted stripeSize=%q with %+v", v, striping)
				}
			case strings.HasPrefix(k, reservedPrefix):
			default:
				t.Fatalf("parseCreate accepted parameter %q", k)
			}
		}
		if _, ok := params[ParamStripes]; !ok && striping.Stripes != 0 {
			t.Fatalf("parseCreate(%q): striping %+v without a stripes parameter", params, striping)
		}
		if _, ok := params[ParamPool]; !ok && pool != "" {
			t.Fatalf("parseCreate(%q): pool %q without a pool parameter", params, pool)
		}
	})
}

// TestParseSizeExponents: sizes with a decimal exponent read exactly; the
// exponents ParseQuantity cannot handle (it computes 10^e in full, and wraps
// e at 2^32) are InvalidArgument at once.
func TestParseSizeExponents(t *testing.T) {
	for v, want := range map[string]int64{"1e9": 1e9, "5E10": 5e10, "1.5e3": 1500, "1E": 1e18, "2Ei": 1 << 61, "12e-1": 2, "1e-3": 1} {
		if got, err := parseSize(attrSize, v); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v, want %d", v, got, err, want)
		}
	}
	for _, v := range []string{"1e2147483647", "9223372E36854775808", "1e4294967296", "1e-2147483649", "1e100", "1e19", "0e5"} {
		if got, err := parseSize(attrSize, v); status.Code(err) != codes.InvalidArgument {
			t.Errorf("parseSize(%q) = %d, %v, want InvalidArgument", v, got, err)
		}
	}
}
