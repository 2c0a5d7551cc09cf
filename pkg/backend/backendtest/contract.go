package backendtest

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/names"
)

// Subject is one backend under the contract suite, on an empty pool.
type Subject struct {
	Backend backend.Backend
	// Pool is the pool name its volumes must report.
	Pool string
	// AddForeign makes a device named id in the pool that carve does not own
	// (an LV without carve's owner tag, a namespace with another uuid).
	AddForeign func(t *testing.T, id string)
	// ActivateTrustsNode, when not "", says why Activate of a device it
	// does not own may return that device's existing node instead of
	// backend.ErrNotOwned (lvm: an existing /dev/<vg>/<lv> is returned
	// without a command; callers find the volume with Get first, which
	// checks ownership). It must still never activate such a device.
	ActivateTrustsNode string
	// NoActivate, when not "", says why Activate cannot make a device node
	// on this host (lvm without device-mapper). The suite then still checks
	// Activate's errors, logs the reason and leaves out only the device node.
	NoActivate string
}

// Factory makes a fresh Subject for one subtest; cleanup goes to t.Cleanup.
type Factory func(t *testing.T) Subject

// Run runs the contract every backend keeps (see backend.Backend), each
// subtest on a fresh pool from f: create, get, list, delete, expand,
// capacity, idempotency (a second Create of an id is backend.ErrExists and
// leaves the volume as it was, so the caller can compare it with the
// request), not-owned devices (never listed, touched or removed), no-space
// (backend.ErrNoSpace, nothing left behind), activate, and DeleteInline for
// backends that implement backend.InlineRemover.
func Run(t *testing.T, f Factory) {
	for _, tc := range []struct {
		name string
		run  func(*suite, *testing.T)
	}{
		{"create", (*suite).create},
		{"get", (*suite).get},
		{"list", (*suite).list},
		{"delete", (*suite).delete},
		{"expand", (*suite).expand},
		{"capacity", (*suite).capacity},
		{"idempotency", (*suite).idempotency},
		{"not-owned", (*suite).notOwned},
		{"no-space", (*suite).noSpace},
		{"activate", (*suite).activate},
		{"inline-remove", (*suite).inlineRemove},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &suite{Subject: f(t), ctx: context.Background()}
			s.align = s.Backend.AlignBytes()
			if s.align <= 0 {
				t.Fatalf("AlignBytes() = %d, want > 0", s.align)
			}
			tc.run(s, t)
		})
	}
}

type suite struct {
	Subject
	ctx   context.Context
	align int64
}

// Names that exercise the encodings (LV tags, the pmem index): a slash,
// spaces, non-ASCII, tag-charset characters.
var (
	nameA = "pvc-a/odd name ü=&,{}"
	nameB = "csi-0123456789abcdef0123456789abcdef"
	nameC = "pvc-c"
)

func (s *suite) createVol(t *testing.T, name string, size int64, ephemeral bool, target string) *backend.Volume {
	t.Helper()
	req := backend.CreateRequest{ID: names.VolumeID(name), Name: name, SizeBytes: size, Ephemeral: ephemeral, TargetPath: target}
	v, err := s.Backend.Create(s.ctx, req)
	if err != nil {
		t.Fatalf("Create(%+v): %v", req, err)
	}
	s.checkVolume(t, "Create", v, req)
	return v
}

// checkVolume: what a volume must say about the request it was made for. A
// volume is never smaller than asked (PMEM may be larger).
func (s *suite) checkVolume(t *testing.T, op string, v *backend.Volume, req backend.CreateRequest) {
	t.Helper()
	if v == nil {
		t.Fatalf("%s: nil volume", op)
	}
	if v.ID != req.ID || v.Name != req.Name || v.Pool != s.Pool || v.Ephemeral != req.Ephemeral || v.TargetPath != req.TargetPath {
		t.Errorf("%s: volume %+v does not match request %+v in pool %q", op, v, req, s.Pool)
	}
	if v.SizeBytes < req.SizeBytes {
		t.Errorf("%s: volume %s has %d bytes, %d requested", op, v.ID, v.SizeBytes, req.SizeBytes)
	}
}

func (s *suite) cap(t *testing.T) backend.Capacity {
	t.Helper()
	c, err := s.Backend.Capacity(s.ctx)
	if err != nil {
		t.Fatalf("Capacity: %v", err)
	}
	return c
}

func (s *suite) mustGet(t *testing.T, id string) *backend.Volume {
	t.Helper()
	v, err := s.Backend.Get(s.ctx, id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return v
}

func (s *suite) ids(t *testing.T) map[string]backend.Volume {
	t.Helper()
	vols, err := s.Backend.List(s.ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	m := map[string]backend.Volume{}
	for _, v := range vols {
		if _, dup := m[v.ID]; dup {
			t.Errorf("List shows %s twice", v.ID)
		}
		m[v.ID] = v
	}
	return m
}

func wantErr(t *testing.T, op string, err, sentinel error) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Errorf("%s: error %v, want one wrapping %q", op, err, sentinel)
	}
}

func (s *suite) create(t *testing.T) {
	c0 := s.cap(t)
	size := 3 * s.align
	v := s.createVol(t, nameA, size, false, "")
	c1 := s.cap(t)
	if c1.TotalBytes != c0.TotalBytes {
		t.Errorf("total changed by a create: %d -> %d", c0.TotalBytes, c1.TotalBytes)
	}
	if used := c0.FreeBytes - c1.FreeBytes; used < v.SizeBytes {
		t.Errorf("a volume of %d bytes took %d free bytes (capacity %+v -> %+v)", v.SizeBytes, used, c0, c1)
	}
	// No size: refused (the caller always asks for at least one unit), nothing made.
	for _, size := range []int64{0, -s.align} {
		req := backend.CreateRequest{ID: names.VolumeID(nameC), Name: nameC, SizeBytes: size}
		if v, err := s.Backend.Create(s.ctx, req); err == nil {
			t.Errorf("Create of %d bytes = %+v, want an error", size, v)
		}
		_, err := s.Backend.Get(s.ctx, req.ID)
		wantErr(t, fmt.Sprintf("Get after a create of %d bytes", size), err, backend.ErrNotFound)
	}
	// Inline ephemeral volume: its flag and target path come back.
	s.createVol(t, nameB, s.align, true, "/var/lib/kubelet/pods/0d4c5ab9-1f7e-4c4a-9e1e-5b7f3c1a2b3c/volumes/kubernetes.io~csi/scratch/mount")
}

func (s *suite) get(t *testing.T) {
	v := s.createVol(t, nameA, 2*s.align, false, "")
	got := s.mustGet(t, v.ID)
	if *got != *v {
		t.Errorf("Get = %+v, Create returned %+v", got, v)
	}
	e := s.createVol(t, nameB, s.align, true, "/target/of/pod")
	if got := s.mustGet(t, e.ID); *got != *e {
		t.Errorf("Get = %+v, Create returned %+v", got, e)
	}
	_, err := s.Backend.Get(s.ctx, names.VolumeID(nameC))
	wantErr(t, "Get of a volume never made", err, backend.ErrNotFound)
}

func (s *suite) list(t *testing.T) {
	if m := s.ids(t); len(m) != 0 {
		t.Fatalf("List of an empty pool: %v", m)
	}
	a := s.createVol(t, nameA, s.align, false, "")
	b := s.createVol(t, nameB, 2*s.align, true, "/target/b")
	m := s.ids(t)
	if len(m) != 2 {
		t.Fatalf("List = %v, want %s and %s", m, a.ID, b.ID)
	}
	for _, v := range []*backend.Volume{a, b} {
		if got := m[v.ID]; got != *s.mustGet(t, v.ID) {
			t.Errorf("List shows %+v, Get %+v", got, *v)
		}
	}
}

func (s *suite) delete(t *testing.T) {
	c0 := s.cap(t)
	a := s.createVol(t, nameA, 2*s.align, false, "")
	keep := s.createVol(t, nameB, s.align, false, "")
	if err := s.Backend.Delete(s.ctx, a.ID); err != nil {
		t.Fatalf("Delete(%s): %v", a.ID, err)
	}
	_, err := s.Backend.Get(s.ctx, a.ID)
	wantErr(t, "Get after Delete", err, backend.ErrNotFound)
	m := s.ids(t)
	if _, ok := m[a.ID]; ok || len(m) != 1 {
		t.Errorf("List after Delete = %v, want only %s", m, keep.ID)
	}
	wantErr(t, "second Delete", s.Backend.Delete(s.ctx, a.ID), backend.ErrNotFound)
	// The name is free again (a claim re-created under the same name).
	again := s.createVol(t, nameA, s.align, true, "/target/again")
	if got := s.mustGet(t, again.ID); *got != *again {
		t.Errorf("re-created volume: Get = %+v, Create returned %+v", got, again)
	}
	for _, id := range []string{again.ID, keep.ID} {
		if err := s.Backend.Delete(s.ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if c := s.cap(t); c.FreeBytes != c0.FreeBytes || c.MaxVolumeBytes != c0.MaxVolumeBytes {
		t.Errorf("capacity after deleting everything %+v, before %+v", c, c0)
	}
}

func (s *suite) expand(t *testing.T) {
	v := s.createVol(t, nameA, 2*s.align, false, "")
	c0 := s.cap(t)
	// To the current size or below: the volume as it is, nothing changes.
	for _, size := range []int64{v.SizeBytes, s.align} {
		got, err := s.Backend.Expand(s.ctx, v.ID, size)
		if err != nil || got == nil || *got != *s.mustGet(t, v.ID) || got.SizeBytes != v.SizeBytes {
			t.Errorf("Expand(%s, %d) of a %d-byte volume = %+v, %v; want it unchanged", v.ID, size, v.SizeBytes, got, err)
		}
	}
	want := backend.AlignUp(v.SizeBytes, s.align) + 2*s.align
	got, err := s.Backend.Expand(s.ctx, v.ID, want)
	if !backend.CanExpand(s.Backend) {
		wantErr(t, "Expand of a fixed-size volume", err, backend.ErrNotExpandable)
		if now := s.mustGet(t, v.ID); now.SizeBytes != v.SizeBytes {
			t.Errorf("failed Expand changed the size: %d -> %d", v.SizeBytes, now.SizeBytes)
		}
	} else {
		if err != nil {
			t.Fatalf("Expand(%s, %d): %v", v.ID, want, err)
		}
		if got.SizeBytes < want || got.ID != v.ID || got.Name != v.Name {
			t.Errorf("Expand(%s, %d) = %+v", v.ID, want, got)
		}
		if now := s.mustGet(t, v.ID); *now != *got {
			t.Errorf("Get after Expand = %+v, Expand returned %+v", now, got)
		}
		if c := s.cap(t); c0.FreeBytes-c.FreeBytes < got.SizeBytes-v.SizeBytes {
			t.Errorf("growing by %d bytes took %d free bytes", got.SizeBytes-v.SizeBytes, c0.FreeBytes-c.FreeBytes)
		}
	}
	_, err = s.Backend.Expand(s.ctx, names.VolumeID(nameC), want)
	wantErr(t, "Expand of a volume never made", err, backend.ErrNotFound)
}

// capacity: the figures are consistent, and MaxVolumeBytes is a promise:
// a volume of exactly that size can be created.
func (s *suite) capacity(t *testing.T) {
	c := s.cap(t)
	if c.TotalBytes <= 0 || c.FreeBytes <= 0 || c.FreeBytes > c.TotalBytes || c.MaxVolumeBytes <= 0 ||
		c.MaxVolumeBytes > c.FreeBytes || c.AlignBytes != s.align || c.MaxVolumeBytes%s.align != 0 {
		t.Fatalf("capacity of an empty pool %+v (AlignBytes() %d)", c, s.align)
	}
	v := s.createVol(t, nameA, c.MaxVolumeBytes, false, "")
	after := s.cap(t)
	if after.MaxVolumeBytes > after.FreeBytes || after.FreeBytes > c.FreeBytes-v.SizeBytes {
		t.Errorf("capacity after a %d-byte volume: %+v (before %+v)", v.SizeBytes, after, c)
	}
}

// idempotency: a retried Create meets ErrExists and an unchanged volume that
// the caller compares with its request (volume.Manager hands it out when name
// and size match, and answers AlreadyExists otherwise).
func (s *suite) idempotency(t *testing.T) {
	v := s.createVol(t, nameA, 2*s.align, false, "")
	c0 := s.cap(t)
	for _, req := range []backend.CreateRequest{
		{ID: v.ID, Name: nameA, SizeBytes: 2 * s.align},                  // the same request again
		{ID: v.ID, Name: nameA, SizeBytes: 4 * s.align},                  // the same name, another size
		{ID: v.ID, Name: nameA, SizeBytes: 2 * s.align, Ephemeral: true}, // the same name, inline
		{ID: v.ID, Name: nameC, SizeBytes: 2 * s.align},                  // another name on the id
	} {
		got, err := s.Backend.Create(s.ctx, req)
		wantErr(t, fmt.Sprintf("Create(%+v) of an existing id", req), err, backend.ErrExists)
		if got != nil {
			t.Errorf("Create of an existing id returned %+v", got)
		}
		if now := s.mustGet(t, v.ID); *now != *v {
			t.Errorf("after Create(%+v): volume %+v, was %+v", req, now, v)
		}
	}
	if c := s.cap(t); c != c0 {
		t.Errorf("capacity after repeated creates %+v, before %+v", c, c0)
	}
	if m := s.ids(t); len(m) != 1 {
		t.Errorf("List after repeated creates: %v", m)
	}
}

// notOwned: a device carve does not own is never listed, changed or removed,
// and its id is not free for a new volume.
func (s *suite) notOwned(t *testing.T) {
	if s.AddForeign == nil {
		t.Fatal("the factory gives no AddForeign: every backend can meet devices it does not own")
	}
	mine := s.createVol(t, nameA, s.align, false, "")
	id := names.VolumeID(nameB)
	s.AddForeign(t, id)
	c0 := s.cap(t)
	if m := s.ids(t); len(m) != 1 || m[mine.ID] != *mine {
		t.Errorf("List with a foreign device = %v, want only %s", m, mine.ID)
	}
	_, err := s.Backend.Get(s.ctx, id)
	wantErr(t, "Get of a foreign device", err, backend.ErrNotOwned)
	wantErr(t, "Delete of a foreign device", s.Backend.Delete(s.ctx, id), backend.ErrNotOwned)
	_, err = s.Backend.Expand(s.ctx, id, 8*s.align)
	wantErr(t, "Expand of a foreign device", err, backend.ErrNotOwned)
	if dev, err := s.Backend.Activate(s.ctx, id); err == nil && s.ActivateTrustsNode != "" {
		t.Logf("Activate of a foreign device returned its existing node %s: %s", dev, s.ActivateTrustsNode)
	} else {
		wantErr(t, "Activate of a foreign device", err, backend.ErrNotOwned)
	}
	_, err = s.Backend.Create(s.ctx, backend.CreateRequest{ID: id, Name: nameB, SizeBytes: s.align})
	wantErr(t, "Create on a foreign device's id", err, backend.ErrExists)
	// Still there, still not ours, nothing freed or taken.
	_, err = s.Backend.Get(s.ctx, id)
	wantErr(t, "Get of the foreign device at the end", err, backend.ErrNotOwned)
	if c := s.cap(t); c != c0 {
		t.Errorf("capacity changed by refused calls: %+v -> %+v", c0, c)
	}
}

// noSpace: a request beyond the free space is ErrNoSpace and leaves nothing.
func (s *suite) noSpace(t *testing.T) {
	c0 := s.cap(t)
	big := backend.AlignUp(c0.FreeBytes, s.align) + s.align
	_, err := s.Backend.Create(s.ctx, backend.CreateRequest{ID: names.VolumeID(nameA), Name: nameA, SizeBytes: big})
	wantErr(t, fmt.Sprintf("Create of %d bytes with %d free", big, c0.FreeBytes), err, backend.ErrNoSpace)
	_, err = s.Backend.Get(s.ctx, names.VolumeID(nameA))
	wantErr(t, "Get after a create without space", err, backend.ErrNotFound)
	if c := s.cap(t); c != c0 {
		t.Errorf("capacity after a refused create %+v, before %+v", c, c0)
	}
	// Nothing of the refused attempt blocks a retry that fits.
	retry := s.createVol(t, nameA, s.align, false, "")
	if err := s.Backend.Delete(s.ctx, retry.ID); err != nil {
		t.Fatal(err)
	}
	// Fill the pool with its largest volume; then even the smallest does not fit.
	full := s.createVol(t, nameB, c0.MaxVolumeBytes, false, "")
	if c := s.cap(t); c.MaxVolumeBytes >= s.align {
		t.Logf("after a volume of MaxVolumeBytes, %d bytes fit still (%+v)", c.MaxVolumeBytes, c)
		s.createVol(t, nameC, c.MaxVolumeBytes, false, "")
	}
	_, err = s.Backend.Create(s.ctx, backend.CreateRequest{ID: names.VolumeID("pvc-last"), Name: "pvc-last", SizeBytes: s.align})
	wantErr(t, "Create in a full pool", err, backend.ErrNoSpace)
	if backend.CanExpand(s.Backend) {
		_, err = s.Backend.Expand(s.ctx, full.ID, full.SizeBytes+s.align)
		wantErr(t, "Expand in a full pool", err, backend.ErrNoSpace)
		if now := s.mustGet(t, full.ID); now.SizeBytes != full.SizeBytes {
			t.Errorf("failed Expand changed the size: %d -> %d", full.SizeBytes, now.SizeBytes)
		}
	}
	if m := s.ids(t); len(m) > 2 {
		t.Errorf("List after refused creates: %v", m)
	}
}

// activate: errors always; the device node where this host can make one.
func (s *suite) activate(t *testing.T) {
	_, err := s.Backend.Activate(s.ctx, names.VolumeID(nameC))
	wantErr(t, "Activate of a volume never made", err, backend.ErrNotFound)
	v := s.createVol(t, nameA, s.align, false, "")
	if s.NoActivate != "" {
		t.Logf("the device node of an activated volume is not checked here: %s", s.NoActivate)
		return
	}
	dev, err := s.Backend.Activate(s.ctx, v.ID)
	if err != nil || dev == "" {
		t.Fatalf("Activate(%s) = %q, %v", v.ID, dev, err)
	}
	if got := s.mustGet(t, v.ID); got.DevicePath != dev {
		t.Errorf("Activate gave %q, Get says %q", dev, got.DevicePath)
	}
}

// inlineRemove: DeleteInline removes only carve's inline volume of that name
// and target, and reports false, touching nothing, for another target, a
// persistent volume of that name, a foreign device and a volume already gone.
func (s *suite) inlineRemove(t *testing.T) {
	r, ok := s.Backend.(backend.InlineRemover)
	if !ok {
		t.Skipf("%T does not implement backend.InlineRemover", s.Backend)
	}
	const target = "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/scratch/mount"
	inl := s.createVol(t, nameB, s.align, true, target)
	pers := s.createVol(t, nameC, s.align, false, "")
	foreign := names.VolumeID(nameA)
	if s.AddForeign != nil {
		s.AddForeign(t, foreign)
	}
	for _, c := range []struct{ what, id, name, target string }{
		{"another target", inl.ID, nameB, target + "2"},
		{"another name", inl.ID, nameC, target},
		{"a persistent volume", pers.ID, nameC, target},
		{"a foreign device", foreign, nameA, target},
	} {
		if done, err := r.DeleteInline(s.ctx, c.id, c.name, c.target); done || err != nil {
			t.Errorf("DeleteInline of %s = %v, %v; want false, nil", c.what, done, err)
		}
	}
	s.mustGet(t, inl.ID)
	s.mustGet(t, pers.ID)
	if done, err := r.DeleteInline(s.ctx, inl.ID, nameB, target); !done || err != nil {
		t.Fatalf("DeleteInline of the inline volume at its target = %v, %v; want true, nil", done, err)
	}
	_, err := s.Backend.Get(s.ctx, inl.ID)
	wantErr(t, "Get after DeleteInline", err, backend.ErrNotFound)
	if done, err := r.DeleteInline(s.ctx, inl.ID, nameB, target); done || err != nil {
		t.Errorf("second DeleteInline = %v, %v; want false, nil", done, err)
	}
	if err := s.Backend.Delete(s.ctx, pers.ID); err != nil {
		t.Fatal(err)
	}
}
