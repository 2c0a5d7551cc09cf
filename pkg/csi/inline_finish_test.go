package csi

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/exec/exectest"
	"github.com/carve-csi/carve/pkg/names"
)

// An inline publish on an lvm pool with zeroing records the filesystem UUID
// it formats with in lvcreate's tags (carve.fsuuid=<uuid>, in place of
// carve.zeroing=pending), and that filesystem is the proof that the zeroing
// finished: no lvchange (issue 13). These tests drive NodePublishVolume over
// lvm's recorded answers and a fake mounter through the retries that proof
// decides: a publish killed or failed before its filesystem was made (zeroed
// again, formatted with the first UUID), kubelet publishing a published
// volume again (nothing zeroed, the mount kept), a probe that fails (nothing
// zeroed), and an LV an earlier build left mounted with the tag alone.

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

// uuidMounter is fakeMounter that records the filesystem UUIDs it was asked
// to format with, and counts unmounts.
type uuidMounter struct {
	*fakeMounter
	mu       sync.Mutex
	uuids    []string
	unmounts int
}

func (m *uuidMounter) Unmount(target string) error {
	m.mu.Lock()
	m.unmounts++
	m.mu.Unlock()
	return m.fakeMounter.Unmount(target)
}

func (m *uuidMounter) FormatAndMountUUID(device, target, fsType, uuid string, options []string) error {
	m.mu.Lock()
	m.uuids = append(m.uuids, uuid)
	m.mu.Unlock()
	return m.fakeMounter.FormatAndMountUUID(device, target, fsType, uuid, options)
}

func (m *uuidMounter) last() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.uuids) == 0 {
		return ""
	}
	return m.uuids[len(m.uuids)-1]
}

// superblocks answers the lvm backend's reads of a device's filesystem
// UUIDs (Backend.SetSuperblockReader) from a queue, logged as "superblock".
type superblocks struct {
	log *toolLog
	mu  sync.Mutex
	q   []superblockAnswer
}

type superblockAnswer struct {
	uuids []string
	err   error
}

func (s *superblocks) answer(uuids []string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.q = append(s.q, superblockAnswer{uuids, err})
}

func (s *superblocks) read(string) ([]string, error) {
	s.log.add("superblock")
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.q) == 0 {
		return nil, errors.New("no superblock answer queued")
	}
	a := s.q[0]
	s.q = s.q[1:]
	return a.uuids, a.err
}

// finishRig is a node with zeroing on, a fake mounter that records UUIDs,
// its superblock reads answered by sb, and an inline publish request of
// finishHandle (32 MiB).
func finishRig(t *testing.T) (log *toolLog, a *lvmAnswers, sb *superblocks, fm *uuidMounter, n *Node, req *csi.NodePublishVolumeRequest) {
	t.Helper()
	log = &toolLog{}
	a = &lvmAnswers{log: log, queue: map[string][]exectest.Response{}}
	kubelet := t.TempDir()
	fm = &uuidMounter{fakeMounter: newFakeMounter()}
	sb = &superblocks{log: log}
	t.Cleanup(func() {
		if len(sb.q) > 0 {
			t.Errorf("%d superblock answers queued but never read", len(sb.q))
		}
	})
	n = pathNode(t, a, fm, "/dev/loop-fake", kubelet, (*lvm.Backend).EnableZeroing,
		func(b *lvm.Backend) { b.SetSuperblockReader(sb.read) })
	req = podInline(t, kubelet, "0f3c9a52", finishHandle, map[string]string{"size": "32Mi"})
	return log, a, sb, fm, n, req
}

// recordedUUID is the carve.fsuuid tag of the last lvcreate a ran, or "".
func recordedUUID(a *lvmAnswers) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := len(a.argv) - 1; i >= 0; i-- {
		if argv := a.argv[i]; len(argv) > 1 && argv[1] == "lvcreate" {
			for _, arg := range argv {
				if u, ok := strings.CutPrefix(arg, lvm.TagFormatUUID+"="); ok {
					return u
				}
			}
			return ""
		}
	}
	return ""
}

// The format fails (as a publish killed before its mkfs leaves things): the
// publish fails and keeps the device for kubelet's retry. The retry finds
// the LV, its device holds no filesystem, so it is zeroed again and then
// formatted with the UUID the first lvcreate recorded, not a new one.
func TestInlinePublishRetryZeroesUnformatted(t *testing.T) {
	log, a, sb, fm, n, req := finishRig(t)
	ctx := context.Background()
	id := names.VolumeID(finishHandle)

	a.answer("lvcreate", exectest.Response{Stdout: captured(t, "create-ephemeral", 0)})
	a.answer("blkdiscard", exectest.Response{})
	fm.failNext = fmt.Errorf("mkfs.ext4: %w", errFake)
	_, err := n.NodePublishVolume(ctx, req)
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), errFake.Error()) {
		t.Fatalf("publish with a failing format: %v, want Internal with the format's error", err)
	}
	log.want(t, "NodePublishVolume", "lvm lvcreate", "blkdiscard")
	uuid := recordedUUID(a)
	if uuid == "" || fm.last() != uuid {
		t.Fatalf("lvcreate recorded UUID %q, the format was asked for %q; want the same UUID", uuid, fm.last())
	}
	if _, ok := n.failed.Load(id); !ok {
		t.Error("the failed publish's device is not kept for kubelet's retry")
	}

	tagged := inlineLVs(t, req.TargetPath, lvm.TagFormatUUID+"="+uuid)
	a.answer("lvcreate", existsResponse(id))
	a.answer("lvs", exectest.Response{Stdout: tagged}) // finishZeroing's selection
	sb.answer(nil, nil)                                // no filesystem
	a.answer("blkdiscard", exectest.Response{})
	a.answer("lvs", exectest.Response{Stdout: tagged}) // the volume found again
	if _, err := n.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("retry: %v", err)
	}
	log.want(t, "the retry", "lvm lvcreate", "lvm lvs", "superblock", "blkdiscard", "lvm lvs")
	if got := recordedUUID(a); got == "" || got == uuid {
		t.Errorf("the retry's lvcreate asked for UUID %q; want a new one (lvm keeps the first)", got)
	}
	if fm.last() != uuid {
		t.Errorf("the retry formatted with UUID %q, want the recorded %q", fm.last(), uuid)
	}
	if ok, _ := fm.IsMountPoint(req.TargetPath); !ok {
		t.Error("retry did not mount the target")
	}
	if _, ok := n.failed.Load(id); ok {
		t.Error("a published volume is still marked failed")
	}
}

// kubelet publishes a published inline volume again (it does after a
// restart): its device holds the recorded filesystem, so nothing is zeroed
// and the mount stays. A device that cannot be read fails the publish and
// zeroes nothing either: the filesystem may be the pod's.
func TestInlinePublishRetryKeepsFormatted(t *testing.T) {
	log, a, sb, fm, n, req := finishRig(t)
	ctx := context.Background()
	id := names.VolumeID(finishHandle)
	const uuid = "0b7c9d2e-1111-4222-8333-444455556666"
	if err := fm.FormatAndMountUUID("/dev/loop-fake", req.TargetPath, "ext4", uuid, nil); err != nil { // the first publish
		t.Fatal(err)
	}
	log.take()
	tagged := inlineLVs(t, req.TargetPath, lvm.TagFormatUUID+"="+uuid)

	a.answer("lvs", exectest.Response{Stdout: tagged}) // unmountUnzeroed: not Unzeroed, mount kept
	a.answer("lvcreate", existsResponse(id))
	a.answer("lvs", exectest.Response{Stdout: tagged})
	sb.answer([]string{uuid}, nil)
	a.answer("lvs", exectest.Response{Stdout: tagged})
	if _, err := n.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("publish of a published volume: %v", err)
	}
	log.want(t, "publish of a published volume", "lvm lvs", "lvm lvcreate", "lvm lvs", "superblock", "lvm lvs")
	if ok, _ := fm.IsMountPoint(req.TargetPath); !ok || fm.unmounts != 0 {
		t.Errorf("publish of a published volume: mounted %v after %d unmounts; want its mount kept", ok, fm.unmounts)
	}

	a.answer("lvs", exectest.Response{Stdout: tagged})
	a.answer("lvcreate", existsResponse(id))
	a.answer("lvs", exectest.Response{Stdout: tagged})
	sb.answer(nil, errors.New("read superblock of /dev/carvevg/x: input/output error"))
	if _, err := n.NodePublishVolume(ctx, req); err == nil {
		t.Fatal("publish whose device read failed succeeded")
	}
	log.want(t, "publish whose device read failed", "lvm lvs", "lvm lvcreate", "lvm lvs", "superblock")
	if ok, _ := fm.IsMountPoint(req.TargetPath); !ok || fm.unmounts != 0 {
		t.Errorf("publish whose device read failed: mounted %v after %d unmounts; want the pod's mount kept", ok, fm.unmounts)
	}
	a.answer("lvremove", removedOut(id))
	if _, err := n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: finishHandle, TargetPath: req.TargetPath}); err != nil {
		t.Fatalf("unpublish: %v", err)
	}
}

// An earlier build tagged inline LVs carve.zeroing=pending and dropped the
// tag with an lvchange after the mount; killed in between, it left the
// target mounted on an LV with that tag. The retry unmounts it before its
// create zeroes the volume again (blkdiscard opens the device exclusively:
// under the mount it fails with EBUSY at every retry, util-linux 2.38), and
// the tag is then dropped as for a persistent volume.
func TestInlinePublishRetryUnmountsUnzeroed(t *testing.T) {
	log, a, _, fm, n, req := finishRig(t)
	ctx := context.Background()
	id := names.VolumeID(finishHandle)
	if err := fm.FormatAndMountUUID("/dev/loop-fake", req.TargetPath, "ext4", "", nil); err != nil { // the killed publish's mount
		t.Fatal(err)
	}
	log.take()

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
	a.answer("lvremove", removedOut(id))
	if _, err := n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: finishHandle, TargetPath: req.TargetPath}); err != nil {
		t.Fatalf("unpublish: %v", err)
	}
}
