package lvm

import (
	"context"
	"encoding/json"
	"errors"
	"path"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/exec/exectest"
)

// capturedReports returns the stdout of every recorded `lvm lvs` and `lvm
// vgs` run in testdata: the seed corpus is real lvm2 output.
func capturedReports(f *testing.F) []string {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		f.Fatalf("captures: %v", err)
	}
	seen := map[string]bool{}
	var outs []string
	for _, file := range files {
		calls, err := readCapture(file)
		if err != nil {
			f.Fatal(err)
		}
		for _, c := range calls {
			if len(c.Argv) > 1 && (c.Argv[1] == "lvs" || c.Argv[1] == "vgs") && c.Stdout != "" && !seen[c.Stdout] {
				seen[c.Stdout] = true
				outs = append(outs, c.Stdout)
			}
		}
	}
	if len(outs) < 5 {
		f.Fatalf("only %d captured lvs/vgs reports", len(outs))
	}
	return outs
}

// FuzzLVMReport feeds lvs/vgs JSON reports to the parser and, through a fake
// runner, to the backend's Get, List, Capacity and New. Garbage and
// truncated reports give errors, never a panic; what parses renders back to
// the same rows; a volume is only returned for an LV of this VG with carve's
// owner tag, with a size >= 0 and a clean absolute device path, and Get
// agrees with List; capacity is never negative and its largest volume is
// whole extents of free space.
func FuzzLVMReport(f *testing.F) {
	for _, out := range capturedReports(f) {
		f.Add(out)
		f.Add(out[:len(out)/2]) // truncated
	}
	f.Add(`{"report":[{"vg":[{"vg_name":"carvevg","vg_size":"-1","vg_free":"-4194304","vg_extent_size":"4194304","vg_free_count":"-1"}]}]}`)
	f.Add(`{"report":[{"vg":[{"vg_name":"carvevg","vg_size":1,"vg_free":9223372036854775807,"vg_extent_size":3,"vg_free_count":9223372036854775807}]}]}`)
	f.Add(`{"report":[{"lv":[{"lv_name":"` + capID + `","vg_name":"carvevg","lv_size":"-5","lv_tags":"carve.owner=carve.csi.dev","lv_path":"../x"}]}]}`)
	f.Fuzz(func(t *testing.T, out string) {
		if rows, err := parseLVs([]byte(out)); err == nil {
			again, err := json.Marshal(map[string]any{"report": []map[string]any{{"lv": rows}}})
			if err != nil {
				t.Fatal(err)
			}
			rows2, err := parseLVs(again)
			if err != nil || !reflect.DeepEqual(rows, rows2) {
				t.Fatalf("parseLVs(%q) = %+v does not round-trip through %s: %+v, %v", out, rows, again, rows2, err)
			}
		}

		fake := &exectest.Fake{Handler: func(context.Context, []string) (exectest.Response, bool) {
			return exectest.Response{Stdout: out}, true
		}}
		b := bareBackend(fake, capVG)
		ctx := context.Background()

		if nb, err := New(ctx, fake, capPool, capVG, capOwner); err == nil && nb.AlignBytes() <= 0 {
			t.Fatalf("New from %q: extent size %d", out, nb.AlignBytes())
		}
		if c, err := b.Capacity(ctx); err == nil {
			if c.TotalBytes < 0 || c.FreeBytes < 0 || c.MaxVolumeBytes < 0 || c.AlignBytes <= 0 ||
				c.MaxVolumeBytes > c.FreeBytes || c.MaxVolumeBytes%c.AlignBytes != 0 {
				t.Fatalf("Capacity from %q = %+v", out, c)
			}
		} else if c.FreeBytes != 0 || c.MaxVolumeBytes != 0 {
			t.Fatalf("Capacity from %q = %+v with error %v: a pool that fails offers no space", out, c, err)
		}

		vols, listErr := b.List(ctx)
		for _, v := range vols {
			checkVolume(t, out, v)
		}
		for _, id := range []string{capID, capEphID, capLongID} {
			v, err := b.Get(ctx, id)
			if err != nil {
				continue
			}
			if v.ID != id {
				t.Fatalf("Get(%s) from %q returned %s", id, out, v.ID)
			}
			checkVolume(t, out, *v)
			found := false
			for _, lv := range vols {
				found = found || reflect.DeepEqual(lv, *v)
			}
			if listErr == nil && !found {
				t.Fatalf("Get(%s) from %q = %+v, which List (%+v) does not have", id, out, v, vols)
			}
		}
	})
}

func checkVolume(t *testing.T, out string, v backend.Volume) {
	t.Helper()
	if v.Pool != capPool || v.SizeBytes < 0 || !path.IsAbs(v.DevicePath) || path.Clean(v.DevicePath) != v.DevicePath {
		t.Fatalf("volume from %q: %+v", out, v)
	}
	if !strings.Contains(out, TagOwner+"="+capOwner) {
		t.Fatalf("volume %s from %q, which has no owner tag", v.ID, out)
	}
}

// FuzzTags: the tags of any volume are valid LVM tags (charset, length,
// owner first) and ParseTags gives back exactly what they record, whatever
// order lvm lists them in and whatever other tags the LV has; arbitrary
// lv_tags never panic, and what ParseTags decodes from them encodes back to
// tags that decode the same.
func FuzzTags(f *testing.F) {
	f.Add("pvc-1234/odd name ü=&", "", false, "carve.owner=x,carve.name=%%%")
	f.Add(capEphName, capEphTarget, true, "carve.owner=x,carve.target.0=YWJj,carve.target.2=YWJj")
	f.Add(capLongName, capLongTgt, true, "carve.name.1=YQ,carve.name.0=YQ,carve.name.+2=YQ,carve.name.-1=YQ")
	f.Add("", "/", false, "carve.name.99999999999999999999=YQ,carve.ephemeral=true,carve.ephemeral=false")
	f.Fuzz(func(t *testing.T, name, target string, eph bool, raw string) {
		tags := Tags(TagOwner+"="+capOwner, name, eph, target)
		if tags[0] != TagOwner+"="+capOwner {
			t.Fatalf("owner tag not first: %q", tags)
		}
		for _, tag := range tags {
			if !lvmTagPattern.MatchString(tag) || len(tag) > MaxTagLen || strings.Contains(tag, ",") {
				t.Fatalf("Tags(%q, %q): %q (%d chars) is not a valid LVM tag", name, target, tag, len(tag))
			}
		}
		// lvm lists tags sorted; the foreign ones come from raw.
		all := append(append([]string(nil), tags...), "someone.else=tag")
		for i, j := 0, len(all)-1; i < j; i, j = i+1, j-1 {
			all[i], all[j] = all[j], all[i]
		}
		info, err := ParseTags(strings.Join(all, ","))
		want := TagInfo{Owner: capOwner, Name: name, Ephemeral: eph, TargetPath: target}
		if err != nil || info != want {
			t.Fatalf("Tags(%q, %v, %q) = %q parse back as %+v, %v", name, eph, target, tags, info, err)
		}

		got, err := ParseTags(raw)
		if err != nil || got.Owner == "" || strings.Contains(got.Owner, ",") {
			return
		}
		tags = Tags(TagOwner+"="+got.Owner, got.Name, got.Ephemeral, got.TargetPath)
		if got.Source != "" {
			tags = append(tags, TagSource+"="+got.Source)
		}
		again, err := ParseTags(strings.Join(tags, ","))
		if err != nil || again != got {
			t.Fatalf("ParseTags(%q) = %+v; encoded again it parses as %+v, %v", raw, got, again, err)
		}
	})
}

// TestCapturedReportsStructure: every captured lvs/vgs report parses into as
// many rows as it names LVs or VGs, with the fields lvm always fills, and
// the VG numbers agree with each other (free = free extents x extent size).
func TestCapturedReportsStructure(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("captures: %v", err)
	}
	lvs, vgs := 0, 0
	for _, file := range files {
		calls, err := readCapture(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range calls {
			if len(c.Argv) < 2 || c.RC != 0 || c.Stdout == "" {
				continue
			}
			switch c.Argv[1] {
			case "lvs":
				lvs++
				rows, err := parseLVs([]byte(c.Stdout))
				if err != nil || len(rows) != strings.Count(c.Stdout, `"lv_name"`) {
					t.Fatalf("%s: %d rows from %d LVs: %v", file, len(rows), strings.Count(c.Stdout, `"lv_name"`), err)
				}
				// A thin pool has no device node: lv_path is empty (thin captures).
				var tp struct {
					Report []struct {
						LV []thinRow `json:"lv"`
					} `json:"report"`
				}
				pools := map[string]bool{}
				if DecodeReport([]byte(c.Stdout), &tp) == nil {
					for _, r := range tp.Report {
						for _, row := range r.LV {
							pools[row.Name] = row.Segtype == "thin-pool"
						}
					}
				}
				for _, r := range rows {
					size, err := r.Size.int()
					path := "/dev/" + r.VG + "/" + r.Name
					if pools[r.Name] {
						path = ""
					}
					if r.Name == "" || r.VG == "" || err != nil || size <= 0 || r.Path != path {
						t.Errorf("%s: row %+v (size %d, %v)", file, r, size, err)
					}
				}
			case "vgs":
				vgs++
				var rep struct {
					Report []struct {
						VG []vgRow `json:"vg"`
					} `json:"report"`
				}
				if err := DecodeReport([]byte(c.Stdout), &rep); err != nil || len(rep.Report) != 1 ||
					len(rep.Report[0].VG) != strings.Count(c.Stdout, `"vg_name"`) {
					t.Fatalf("%s: vgs report %+v: %v", file, rep, err)
				}
				for _, r := range rep.Report[0].VG {
					size, err1 := r.Size.int()
					free, err2 := r.Free.int()
					ext, err3 := r.ExtentSize.int()
					count, err4 := r.FreeCount.int()
					if err := errors.Join(err1, err2, err3, err4); err != nil || ext <= 0 || free > size || free != count*ext {
						t.Errorf("%s: vg %+v: %v", file, r, err)
					}
				}
			}
		}
	}
	if lvs < 10 || vgs < 3 {
		t.Fatalf("only %d lvs and %d vgs captures", lvs, vgs)
	}
}
