package csi

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/exec/exectest"
	"github.com/carve-csi/carve/pkg/names"
)

// An inline publish on an lvm pool with zeroing runs the lvchange that drops
// carve.zeroing=pending alongside its format and mount (issue 13). These
// tests drive NodePublishVolume over lvm's recorded answers and a fake
// mounter through the outcomes of that overlap: the lvchange fails, the
// format fails, and a retry finds the target mounted on a volume whose tag
// is still there (the driver was killed between its mount and the lvchange).

const finishHandle = "csi-4b1d0c5e6f7a8b9c" // the name in the recorded runs

var lvTagsField = regexp.MustCompile(`"lv_tags":"[^"]*"`)

// inlineLVs is lvs's report of finishHandle's inline LV published at target
// (the recorded get-ephemeral run with its tags set: lvm lists them sorted),
// with extra tags.
func inlineLVs(t *testing.T, target string, extra ...string) string {
	t.Helper()
	tags := append(lvm.Tags(pathOwner, finishHandle, true, target), extra...)
	sort.Strings(tags)
	out := captured(t, "get-ephemeral", 0)
	if !lvTagsField.MatchString(out) {
		t.Fatal("get-ephemeral has no lv_tags")
	}
	return lvTagsField.ReplaceAllLiteralString(out, `"lv_tags":"`+strings.Join(tags, ",")+`"`)
}

// noLVs is lvs's report when its selection matched nothing (rc 0).
func noLVs(t *testing.T) string { return captured(t, "get-missing", 0) }

func existsResponse(id string) exectest.Response {
	return exectest.Response{ExitCode: 5, Stderr: `  Logical Volume "` + id + `" already exists in volume group "` + pathVG + `"`}
}

// signalMounter is fakeMounter whose FormatAndMount closes formatting first.
type signalMounter struct {
	*fakeMounter
	formatting chan struct{}
}

func (m *signalMounter) FormatAndMount(device, target, fsType string, options []string) error {
	select {
	case <-m.formatting:
	default:
		close(m.formatting)
	}
	return m.fakeMounter.FormatAndMount(device, target, fsType, options)
}

// waitChan waits for c, or fails after d: on code that runs the lvchange
// before the format, the format never comes while the lvchange runs.
func waitChan(ctx context.Context, c <-chan struct{}, d time.Duration, what string) error {
	select {
	case <-c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return fmt.Errorf("%s did not happen within %v", what, d)
	}
}

// finishRig is a node with zeroing on, a fake mounter that signals its
// format, and an inline publish request of finishHandle (32 MiB).
func finishRig(t *testing.T) (*toolLog, *lvmAnswers, *signalMounter, *Node, *csi.NodePublishVolumeRequest) {
	t.Helper()
	log := &toolLog{}
	a := &lvmAnswers{log: log, queue: map[string][]exectest.Response{}}
	kubelet := t.TempDir()
	fm := &signalMounter{fakeMounter: newFakeMounter(), formatting: make(chan struct{})}
	n := pathNode(t, a, fm, "/dev/loop-fake", kubelet, (*lvm.Backend).EnableZeroing)
	req := podInline(t, kubelet, "0f3c9a52", finishHandle, map[string]string{"size": "32Mi"})
	return log, a, fm, n, req
}

// The lvchange fails: the publish fails with lvm's code and hands nothing
// out (the target, mounted meanwhile, is unmounted; the tag stays), and the
// retry zeroes the volume again, formats and mounts it.
func TestInlinePublishFinishFails(t *testing.T) {
	log, a, fm, n, req := finishRig(t)
	ctx := context.Background()
	id := names.VolumeID(finishHandle)

	a.answer("lvcreate", exectest.Response{Stdout: captured(t, "create-ephemeral", 0)})
	a.answer("blkdiscard", exectest.Response{})
	a.answer("lvchange", exectest.Response{ExitCode: 5, Stderr: "  Failed to write VG " + pathVG + ".",
		Hook: func(ctx context.Context) error {
			// Fails only once the target is mounted: the publish must undo it.
			return waitFor(ctx, 10*time.Second, func() bool { ok, _ := fm.IsMountPoint(req.TargetPath); return ok })
		}})
	_, err := n.NodePublishVolume(ctx, req)
	if err == nil {
		t.Fatal("publish whose lvchange failed succeeded")
	}
	// What toStatus gives lvm's error (the code today's synchronous create gave).
	if got, want := status.Code(err), codes.Internal; got != want {
		t.Errorf("publish: %v, want code %v", err, want)
	}
	if !strings.Contains(err.Error(), "Failed to write VG") {
		t.Errorf("publish error %q does not name lvm's cause", err)
	}
	if ok, _ := fm.IsMountPoint(req.TargetPath); ok {
		t.Error("target left mounted after the lvchange failed")
	}
	if _, ok := n.failed.Load(id); !ok {
		t.Error("the failed publish's device is not kept for kubelet's retry")
	}
	wantBefore(t, log.take(), "blkdiscard", "lvm lvchange")

	// A retry whose zeroing fails fails too: the volume is not handed out
	// (it was, as "found again", when the create's error still said exists).
	a.answer("lvcreate", existsResponse(id))
	a.answer("lvs", exectest.Response{Stdout: inlineLVs(t, req.TargetPath, lvm.TagZeroing)})
	a.answer("blkdiscard", exectest.Response{ExitCode: 1, Stderr: "blkdiscard: BLKZEROOUT ioctl failed: Input/output error"})
	if _, err := n.NodePublishVolume(ctx, req); err == nil {
		t.Fatal("a retry whose zeroing failed succeeded")
	}
	log.want(t, "the retry whose zeroing failed", "lvm lvcreate", "lvm lvs", "blkdiscard")
	if ok, _ := fm.IsMountPoint(req.TargetPath); ok {
		t.Error("a retry whose zeroing failed mounted the target")
	}

	// The retry: lvcreate finds the LV, its tag is still there (lvs), so it
	// is zeroed and the tag dropped before the volume is looked at and mounted.
	a.answer("lvcreate", existsResponse(id))
	a.answer("lvs", exectest.Response{Stdout: inlineLVs(t, req.TargetPath, lvm.TagZeroing)})
	a.answer("blkdiscard", exectest.Response{})
	a.answer("lvchange", exectest.Response{Stdout: "  Logical volume " + pathVG + "/" + id + " changed.\n"})
	a.answer("lvs", exectest.Response{Stdout: inlineLVs(t, req.TargetPath)})
	if _, err := n.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("retry: %v", err)
	}
	log.want(t, "the retry", "lvm lvcreate", "lvm lvs", "blkdiscard", "lvm lvchange", "lvm lvs")
	if ok, _ := fm.IsMountPoint(req.TargetPath); !ok {
		t.Error("retry did not mount the target")
	}
	if _, ok := n.failed.Load(id); ok {
		t.Error("a published volume is still marked failed")
	}
}

// The format fails while the lvchange succeeds: the outcome of a failed
// mount before (the publish fails with the mount's error, the device stays
// for the retry, zeroed and untagged), and the retry does not zero it again.
func TestInlinePublishFormatFailsFinishSucceeds(t *testing.T) {
	log, a, fm, n, req := finishRig(t)
	ctx := context.Background()
	id := names.VolumeID(finishHandle)

	finished := make(chan struct{})
	a.answer("lvcreate", exectest.Response{Stdout: captured(t, "create-ephemeral", 0)})
	a.answer("blkdiscard", exectest.Response{})
	a.answer("lvchange", exectest.Response{Stdout: "  Logical volume " + pathVG + "/" + id + " changed.\n",
		Hook: func(ctx context.Context) error {
			defer close(finished)
			// The format runs (and fails) while the lvchange runs.
			if err := waitChan(ctx, fm.formatting, 10*time.Second, "the format"); err != nil {
				return err
			}
			time.Sleep(50 * time.Millisecond) // the publish must wait for this
			return nil
		}})
	fm.failNext = fmt.Errorf("mkfs.ext4: %w", errFake)
	_, err := n.NodePublishVolume(ctx, req)
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), errFake.Error()) {
		t.Fatalf("publish with a failing format: %v, want Internal with the format's error", err)
	}
	select {
	case <-finished:
	default:
		t.Error("publish returned before its lvchange finished")
	}
	if ok, _ := fm.IsMountPoint(req.TargetPath); ok {
		t.Error("target mounted after a failed format")
	}
	if _, ok := n.failed.Load(id); !ok {
		t.Error("the failed publish's device is not kept for kubelet's retry")
	}
	log.want(t, "NodePublishVolume", "lvm lvcreate", "blkdiscard", "lvm lvchange")

	// The retry: the tag is gone (lvs selects nothing), nothing is zeroed.
	a.answer("lvcreate", existsResponse(id))
	a.answer("lvs", exectest.Response{Stdout: noLVs(t)})
	a.answer("lvs", exectest.Response{Stdout: inlineLVs(t, req.TargetPath)})
	if _, err := n.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("retry: %v", err)
	}
	log.want(t, "the retry", "lvm lvcreate", "lvm lvs", "lvm lvs")
	if ok, _ := fm.IsMountPoint(req.TargetPath); !ok {
		t.Error("retry did not mount the target")
	}
}

// The driver was killed after the publish mounted the target but before its
// lvchange dropped the tag: the retry finds the target mounted on a volume
// that still needs zeroing, and unmounts it before its create zeroes the
// volume again (blkdiscard opens the device exclusively: under the mount it
// fails with EBUSY at every retry, util-linux 2.38). A retry that finds a
// finished volume mounted keeps the mount and runs no zeroing.
func TestInlinePublishRetryUnmountsUnzeroed(t *testing.T) {
	log := &toolLog{}
	a := &lvmAnswers{log: log, queue: map[string][]exectest.Response{}}
	kubelet := t.TempDir()
	fm := newFakeMounter()
	n := pathNode(t, a, fm, "/dev/loop-fake", kubelet, (*lvm.Backend).EnableZeroing)
	ctx := context.Background()
	id := names.VolumeID(finishHandle)
	req := podInline(t, kubelet, "0f3c9a52", finishHandle, map[string]string{"size": "32Mi"})
	if err := fm.FormatAndMount("/dev/loop-fake", req.TargetPath, "ext4", nil); err != nil { // the killed publish's mount
		t.Fatal(err)
	}

	unzeroed := exectest.Response{Stdout: inlineLVs(t, req.TargetPath, lvm.TagZeroing)}
	a.answer("lvs", unzeroed) // the mounted target's volume
	a.answer("lvcreate", existsResponse(id))
	a.answer("lvs", unzeroed) // finishZeroing's selection
	a.answer("blkdiscard", exectest.Response{Hook: func(context.Context) error {
		if ok, _ := fm.IsMountPoint(req.TargetPath); ok {
			return errors.New("blkdiscard: cannot open /dev/loop-fake: Device or resource busy")
		}
		return nil
	}})
	a.answer("lvchange", exectest.Response{Stdout: "  Logical volume " + pathVG + "/" + id + " changed.\n"})
	a.answer("lvs", exectest.Response{Stdout: inlineLVs(t, req.TargetPath)})
	if _, err := n.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("retry after a kill between mount and lvchange: %v", err)
	}
	log.want(t, "the retry", "lvm lvs", "lvm lvcreate", "lvm lvs", "blkdiscard", "lvm lvchange", "lvm lvs")
	if ok, _ := fm.IsMountPoint(req.TargetPath); !ok {
		t.Error("retry did not mount the target again")
	}

	// kubelet publishes again (it does after a restart): the volume is
	// finished, its mount stays, nothing is zeroed.
	a.answer("lvs", exectest.Response{Stdout: inlineLVs(t, req.TargetPath)})
	a.answer("lvcreate", existsResponse(id))
	a.answer("lvs", exectest.Response{Stdout: noLVs(t)})
	a.answer("lvs", exectest.Response{Stdout: inlineLVs(t, req.TargetPath)})
	if _, err := n.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("publish of a published volume: %v", err)
	}
	if got := log.take(); slices.Contains(got, "blkdiscard") || len(got) != 4 {
		t.Errorf("publish of a published volume ran %q, want lvs, lvcreate, lvs, lvs and no zeroing", got)
	}
	if ok, _ := fm.IsMountPoint(req.TargetPath); !ok {
		t.Error("publish of a published volume lost its mount")
	}
	a.answer("lvremove", removedOut(id))
	if _, err := n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: finishHandle, TargetPath: req.TargetPath}); err != nil {
		t.Fatalf("unpublish: %v", err)
	}
}
