package csi

import (
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Only single-node modes: a local volume cannot be shared across nodes.
var supportedAccessModes = map[csi.VolumeCapability_AccessMode_Mode]bool{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:        true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:   true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER: true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:  true,
}

var supportedFSTypes = map[string]bool{"": true, "ext4": true, "xfs": true}

// checkCapability returns why a capability is unsupported, or nil.
func checkCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return fmt.Errorf("volume capability is missing")
	}
	if c.GetAccessMode() == nil {
		return fmt.Errorf("access mode is missing")
	}
	if m := c.GetAccessMode().GetMode(); !supportedAccessModes[m] {
		return fmt.Errorf("access mode %s is not supported: carve volumes are node-local", m)
	}
	switch t := c.GetAccessType().(type) {
	case *csi.VolumeCapability_Block:
	case *csi.VolumeCapability_Mount:
		if !supportedFSTypes[t.Mount.GetFsType()] {
			return fmt.Errorf("fs type %q is not supported (ext4, xfs)", t.Mount.GetFsType())
		}
	default:
		return fmt.Errorf("access type is missing (block or mount)")
	}
	return nil
}

func checkCapabilities(cs []*csi.VolumeCapability) error {
	if len(cs) == 0 {
		return fmt.Errorf("volume capabilities are missing")
	}
	for _, c := range cs {
		if err := checkCapability(c); err != nil {
			return err
		}
	}
	return nil
}

func isBlock(c *csi.VolumeCapability) bool { return c.GetBlock() != nil }

func readOnlyMode(c *csi.VolumeCapability) bool {
	return c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
}
