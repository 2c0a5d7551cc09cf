package nodeagent

import "github.com/carve-csi/carve/pkg/errcode"

// The node agent reports failures with the codes the CSI services would return.
var (
	codeOf        = errcode.Of
	permanent     = errcode.Permanent
	permanentName = errcode.PermanentName
)
