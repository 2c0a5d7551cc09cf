// Package superblock reads the UUID of an ext2/3/4 or xfs filesystem straight
// from its primary superblock, the two filesystems carve makes. Unlike
// blkid(8), whose exit code 2 means both "nothing found" and "could not open
// or read the device", it tells a device that holds no such filesystem from
// one it could not read: an inline volume's retry zeroes the device only in
// the first case (issue 13), since in the second it may be a pod's data.
package superblock

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// Layouts, from the kernel's fs/ext4/ext4.h (struct ext4_super_block: at
// byte 1024, s_magic at 0x38, s_uuid at 0x68) and fs/xfs/libxfs/xfs_format.h
// (struct xfs_dsb: at byte 0, sb_magicnum "XFSB" big-endian at 0, sb_uuid at
// 32, sb_inprogress at 126, set by mkfs.xfs until it finished).
const (
	extOffset     = 1024
	extMagicAt    = extOffset + 0x38
	extMagic      = 0xEF53
	extUUIDAt     = extOffset + 0x68
	xfsMagic      = 0x58465342 // "XFSB"
	xfsUUIDAt     = 32
	xfsInProgress = 126
	// readBytes covers both superblocks.
	readBytes = 2048
)

// UUIDs returns the UUIDs (canonical lowercase text) of the complete
// ext2/3/4 and xfs filesystems whose primary superblocks are on device: none
// when it holds neither (an xfs superblock that mkfs.xfs had not finished
// counts as none), two when both magics are there (an earlier filesystem's
// leftovers beside a later one). An error means the device could not be
// opened or read: what it holds is unknown.
func UUIDs(device string) ([]string, error) {
	f, err := os.Open(device)
	if err != nil {
		return nil, fmt.Errorf("read superblock of %s: %w", device, err)
	}
	defer f.Close()
	buf := make([]byte, readBytes)
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fmt.Errorf("read superblock of %s: %w", device, err)
	}
	var found []string
	if binary.LittleEndian.Uint16(buf[extMagicAt:]) == extMagic {
		found = append(found, text(buf[extUUIDAt:extUUIDAt+16]))
	}
	if binary.BigEndian.Uint32(buf[0:]) == xfsMagic && buf[xfsInProgress] == 0 {
		found = append(found, text(buf[xfsUUIDAt:xfsUUIDAt+16]))
	}
	return found, nil
}

// text formats a 16-byte UUID as 8-4-4-4-12 lowercase hex.
func text(u []byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
