package lvm

import (
	"context"
	"testing"

	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/test/lvmtest"
)

// TestRealContract runs the backend contract suite on real lvm2 metadata,
// one loop device per subtest (it skips when not root, lvm2 is missing or no
// loop device is free).
func TestRealContract(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backendtest.Subject {
		ctx := context.Background()
		vg, runner := lvmtest.NewVG(t, 256<<20)
		b, err := New(ctx, runner, "fast", vg, "carve.csi.dev")
		if err != nil {
			t.Fatal(err)
		}
		return backendtest.Subject{Backend: b, Pool: "fast",
			// Another driver's LV: same lvcreate, another owner tag.
			AddForeign: func(t *testing.T, id string) {
				if _, err := runner.Run(ctx, "lvm", "lvcreate", "-n", id, "-L", "8m", "-W", "y", "-y",
					"--addtag", TagOwner+"=other.csi.dev", vg); err != nil {
					t.Fatal(err)
				}
			},
			NoActivate: "lvmtest's volume groups are metadata-only (activation = 0, and this kernel may lack device-mapper); " +
				"activation is covered in the VM rig (test/e2e)",
		}
	})
}
