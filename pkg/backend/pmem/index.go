package pmem

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/carve-csi/carve/pkg/names"
)

// index keeps what a namespace cannot hold: the CSI volume name and, for
// inline ephemeral volumes, the pod's target path. One small JSON file per
// volume, <dir>/<id>.json, written atomically (temp file, fsync, rename,
// fsync of the directory) before the namespace is created and removed after
// it is destroyed, so every namespace carve made has a record.
//
// The namespace stays the state of record: a record without a namespace
// means nothing (New sweeps such records away); a namespace without a record
// (the directory was lost) is still listed, owned and deletable, with its
// name recovered from the id where the id spells it out (pvc-<uuid> names
// always do) and no target path.
type index struct {
	dir string
}

type record struct {
	Name       string `json:"name"`
	TargetPath string `json:"targetPath,omitempty"`
	// Pending: Create has not finished (the namespace may be half-made or
	// not yet wiped). Create writes it before create-namespace and clears it
	// after the wipe, so a retried Create after a crash knows the namespace
	// was never handed out and remakes it. Absent in records of finished
	// volumes, including those written before the field existed.
	Pending bool `json:"pending,omitempty"`
}

func newIndex(dir string) (*index, error) {
	if dir == "" {
		return nil, errors.New("pmem: a state directory for the volume index is required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pmem: state directory: %w", err)
	}
	return &index{dir: dir}, nil
}

func (x *index) path(id string) string { return filepath.Join(x.dir, id+".json") }

func (x *index) put(id string, r record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(x.dir, "."+id+".*.tmp")
	if err != nil {
		return fmt.Errorf("pmem: index: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, x.path(id))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pmem: index: writing record of %s: %w", id, err)
	}
	return x.syncDir()
}

func (x *index) syncDir() error {
	d, err := os.Open(x.dir)
	if err != nil {
		return fmt.Errorf("pmem: index: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("pmem: index: fsync %s: %w", x.dir, err)
	}
	return nil
}

// get returns the record of id; ok is false when there is none or it does
// not belong to id (its name does not hash to id), err only for I/O errors.
func (x *index) get(id string) (r record, ok bool, err error) {
	b, err := os.ReadFile(x.path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return record{}, false, nil
	}
	if err != nil {
		return record{}, false, fmt.Errorf("pmem: index: %w", err)
	}
	if json.Unmarshal(b, &r) != nil || names.VolumeID(r.Name) != id {
		return record{}, false, nil
	}
	return r, true, nil
}

func (x *index) remove(id string) error {
	if err := os.Remove(x.path(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pmem: index: %w", err)
	}
	return nil
}

// ids lists the ids that have a record.
func (x *index) ids() ([]string, error) {
	entries, err := os.ReadDir(x.dir)
	if err != nil {
		return nil, fmt.Errorf("pmem: index: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok && names.IsVolumeID(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// recoverName returns the CSI name an id was made from when the id spells it
// out in full (names.VolumeID keeps names of up to 40 characters of
// [a-z0-9-] readable, as in pvc-<uuid>), else "".
func recoverName(id string) string {
	s := strings.TrimPrefix(id, "carve-")
	if len(s) < 17 {
		return ""
	}
	s = strings.TrimSuffix(s[:len(s)-16], "-")
	if s != "" && names.VolumeID(s) == id {
		return s
	}
	return ""
}
