package report

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// lvm2 2.03.16's vgs report with its archive advice inside, as recorded in
// pkg/backend/lvm/testdata/capacity-archive.txt.
const archiveReport = `  {
      "report": [
  Consider pruning carvevg VG archive with more then 0 MiB in 9002 files (check archiving is needed in lvm.conf).
          {
              "vg": [
                  {"vg_name":"carvevg", "vg_size":"2143289344", "vg_free":"1807745024", "vg_extent_size":"4194304", "vg_free_count":"431", "vg_missing_pv_count":"0"}
              ]
          }
      ]
  }
`

func TestDecodeAroundNotices(t *testing.T) {
	var rep struct {
		Report []struct {
			VG []map[string]string `json:"vg"`
		} `json:"report"`
	}
	noise, ok, err := Decode([]byte(archiveReport), &rep)
	if err != nil || !ok || len(rep.Report) != 1 || rep.Report[0].VG[0]["vg_free"] != "1807745024" {
		t.Fatalf("Decode = %+v, %v, %v", rep, ok, err)
	}
	if len(noise) != 1 || !strings.HasPrefix(noise[0], "Consider pruning carvevg") {
		t.Errorf("noise %q", noise)
	}
	// ndctl: a notice before the JSON, array elements that are numbers.
	var v struct{ A []int }
	if _, ok, err := Decode([]byte("ndctl: notice: something\n{\n  \"A\":[\n    1,\n    -2\n  ]\n}\n"), &v); err != nil || !ok || !reflect.DeepEqual(v.A, []int{1, -2}) {
		t.Errorf("Decode = %+v, %v, %v", v, ok, err)
	}
	if _, ok, err := Decode([]byte("  WARNING: only a notice\n"), &v); ok || err != nil {
		t.Errorf("notice only: ok %v, err %v", ok, err)
	}
	if _, _, err := Decode([]byte("{\n  \"A\": [\n  Consider\n"), &v); err == nil || !strings.Contains(err.Error(), "Consider") {
		t.Errorf("truncated report: %v", err)
	}
}

// TestDecodeSplitAnywhere: JSON may break a line before any token, not only
// where lvm2's and ndctl's pretty-printers do; each such line is kept, while
// notices that merely start like a value are dropped. The first document is
// the input FuzzDecode found (a line starting with ':').
func TestDecodeSplitAnywhere(t *testing.T) {
	for _, doc := range []string{
		"{\"\":[{\"\"\n:0}]}",
		"{\"a\":[\n1, 2\n]}",
		"{\"a\":[\ntrue, false, null\n]}",
		"{\"a\":[{\"b\":\n0}]\n}",
		"{\"a\":[\n-1.5e3]}",
		"{\"a\":\n0\n, \"b\":1}",
	} {
		var want any
		if err := json.Unmarshal([]byte(doc), &want); err != nil {
			t.Fatalf("test document %q: %v", doc, err)
		}
		lines := strings.Split(doc, "\n")
		noisy := strings.Join(append([]string{lines[0], "  Consider pruning vg"}, lines[1:]...), "\n")
		var got any
		noise, ok, err := Decode([]byte(noisy), &got)
		if err != nil || !ok || !reflect.DeepEqual(got, want) || len(noise) != 1 {
			t.Errorf("Decode(%q) = %v, %v, %v, noise %q; want %v", noisy, got, ok, err, noise, want)
		}
	}
	for _, notice := range []string{"1 device found", "null pointer", "- note", "truest", "0x10 bytes", "1.x", "-"} {
		if jsonLine([]byte(notice)) {
			t.Errorf("jsonLine(%q) = true, want a notice", notice)
		}
	}
}

// FuzzDecode: any output decodes or fails without panicking; a valid JSON
// document with notice lines inserted anywhere between its lines decodes to
// the same value, and the notices come back as noise.
func FuzzDecode(f *testing.F) {
	f.Add(archiveReport, "Consider pruning carvevg VG archive with more then 0 MiB in 9002 files (check archiving is needed in lvm.conf).", uint(2))
	f.Add("{\n  \"regions\":[\n    {\n      \"dev\":\"region0\",\n      \"size\":4294836224\n    }\n  ]\n}\n", "  WARNING: Couldn't find device with uuid x.", uint(0))
	f.Fuzz(func(t *testing.T, out, notice string, at uint) {
		var any1 any
		_, _, _ = Decode([]byte(out), &any1)
		notice = strings.TrimSpace(strings.ReplaceAll(notice, "\n", " "))
		var want any
		if json.Unmarshal([]byte(out), &want) != nil || notice == "" || jsonLine([]byte(notice)) {
			return
		}
		lines := strings.Split(out, "\n")
		i := int(at % uint(len(lines)+1))
		noisy := strings.Join(append(append(append([]string{}, lines[:i]...), "  "+notice), lines[i:]...), "\n")
		var got any
		noise, ok, err := Decode([]byte(noisy), &got)
		if err != nil || !ok || !reflect.DeepEqual(got, want) {
			// A notice inside a multi-line string literal is inside the value: not lvm's or ndctl's format.
			if strings.Count(noisy, "\n") > 0 && !json.Valid([]byte(strings.ReplaceAll(out, "\n", ""))) {
				return
			}
			t.Fatalf("Decode(%q) = %v, %v, %v; want %v", noisy, got, ok, err, want)
		}
		if len(noise) == 0 || noise[len(noise)-1] != notice && noise[0] != notice {
			t.Fatalf("noise %q, want %q", noise, notice)
		}
	})
}
