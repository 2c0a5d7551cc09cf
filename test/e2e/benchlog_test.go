package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// carveTimes splits each call of carve's log into its tools and its own work,
// from the lines carve-csi writes at --v=2 --vmodule=exec=5,toollog=4 (the
// format klog gives them); lines before from are not read.
func TestCarveTimes(t *testing.T) {
	early := `I1130 10:00:00.000000  1 exec.go:104] "exec" cmd=["lvm","lvs","--reportformat","json"] duration="1.5s" err=null` + "\n"
	log := early +
		`I1130 10:00:01.000000  1 exec.go:104] "exec" cmd=["lvm","lvcreate","-n","carve-x","-L","268435456b","--addtag","carve.owner=carve.csi.dev","carve"] duration="1.1s" err=null
I1130 10:00:01.000000  1 exec.go:102] "exec" cmd=["blkdiscard","-z","/dev/carve/carve-x"] duration="120ms" err=null
I1130 10:00:01.000000  1 exec.go:102] "exec" cmd=["lvm","lvchange","--deltag","carve.zeroing=pending","carve/carve-x"] duration="330ms" err=null
I1130 10:00:01.000000  1 volume.go:243] "Volume created" name="csi-x" id="carve-x" pool="default" bytes=268435456 ephemeral=true stripes=0
I1130 10:00:01.000000  1 toollog.go:21] "Tool ran" cmd=["blkid","-p","-s","TYPE","-s","PTTYPE","-o","export","/dev/carve/carve-x"] duration="200ms" err="exit status 2"
I1130 10:00:01.000000  1 format.go:65] "Formatting device" device="/dev/carve/carve-x" fsType="ext4" args=["-F","-m0","/dev/carve/carve-x"]
I1130 10:00:01.000000  1 toollog.go:21] "Tool ran" cmd=["mkfs.ext4","-F","-m0","/dev/carve/carve-x"] duration="400ms" err=null
I1130 10:00:01.000000  1 toollog.go:21] "Tool ran" cmd=["mount","-t","ext4","-o","defaults","/dev/carve/carve-x","/k/pods/p/volumes/kubernetes.io~csi/v/mount"] duration="150ms" err=null
I1130 10:00:01.000000  1 server.go:76] "GRPC call" method="/csi.v1.Node/NodePublishVolume" duration="2.4s" code="OK"
I1130 10:00:02.000000  1 toollog.go:21] "Tool ran" cmd=["umount","/k/pods/p/volumes/kubernetes.io~csi/v/mount"] duration="100ms" err=null
I1130 10:00:02.000000  1 exec.go:104] "exec" cmd=["lvm","lvremove","-f","-S","lv_name=carve-x && lv_tags={carve.owner=carve.csi.dev}","carve"] duration="900ms" err=null
I1130 10:00:02.000000  1 server.go:76] "GRPC call" method="/csi.v1.Node/NodeUnpublishVolume" duration="1.02s" code="OK"
`
	path := filepath.Join(t.TempDir(), "carve-csi.log")
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	got := carveTimes(t, path, int64(len(early)))
	ms := func(n ...int) []time.Duration {
		var d []time.Duration
		for _, v := range n {
			d = append(d, time.Duration(v)*time.Millisecond)
		}
		return d
	}
	for name, want := range map[string][]time.Duration{
		"lvcreate": ms(1100), "blkdiscard": ms(120), "lvchange": ms(330), "blkid": ms(200), "mkfs": ms(400), "mount": ms(150), "umount": ms(100), "lvremove": ms(900),
		"lvs": nil, "NodePublishVolume": ms(2400), "NodePublishVolume own": ms(100),
		"NodeUnpublishVolume": ms(1020), "NodeUnpublishVolume own": ms(20),
	} {
		if !slices.Equal(got[name], want) {
			t.Errorf("%s: got %v, want %v", name, got[name], want)
		}
	}
}
