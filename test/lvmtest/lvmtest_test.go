package lvmtest

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteConfig(t *testing.T) {
	dir := t.TempDir()
	if err := WriteConfig(dir, "/dev/loop3"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "lvm.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"a|^/dev/loop3$|"`, "activation = 0", "obtain_device_list_from_udev = 0", "backup = 0", "archive = 0"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("lvm.conf lacks %q:\n%s", want, b)
		}
	}
	if err := WriteConfig(dir, "/dev/loop3|x"); err == nil {
		t.Error("WriteConfig accepted a device path that would break the filter")
	}
}

// TestNewVG creates a real VG and checks that the runner sees exactly it.
func TestNewVG(t *testing.T) {
	t.Logf("device-mapper available: %v (the test VG uses activation = 0 either way)", DeviceMapperAvailable())
	v := NewVGInfo(t, 256<<20, "")
	if !strings.HasPrefix(v.Name, "carvetest") {
		t.Errorf("VG name %q", v.Name)
	}
	out, err := v.Runner.Run(context.Background(), "lvm", "vgs", "-o", "vg_name,pv_count,vg_size", "--reportformat", "json", "--units", "b", "--nosuffix")
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Report []struct {
			VG []map[string]string `json:"vg"`
		} `json:"report"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(rep.Report) != 1 || len(rep.Report[0].VG) != 1 || rep.Report[0].VG[0]["vg_name"] != v.Name {
		t.Fatalf("vgs with the test config should see only %s: %s", v.Name, out)
	}
	// A plain lvcreate works (metadata only).
	if _, err := v.Runner.Run(context.Background(), "lvm", "lvcreate", "-n", "probe", "-L", "8m", "-W", "y", "-y", "--addtag", "a/b=c", v.Name); err != nil {
		t.Fatal(err)
	}
}
