// Package report decodes the JSON that lvm2 and ndctl print, ignoring the
// text those tools may print on stdout around and inside it.
//
// Both tools pretty-print JSON one element per line (lvm2's
// `--reportformat json` one row per line, ndctl one member per line), and
// both print their own notices as whole lines on the same stream: lvm2's
// archive advice ("Consider pruning <vg> VG archive with more then 0 MiB in
// 9001 files ...") lands between `"report": [` and the first row when the
// archive directory holds more than 8192 files and the VG's backup is missing
// or stale (lvmteam/lvm2#137; recorded in ../lvm/testdata/capacity-archive.txt).
// So a line that cannot be part of a pretty-printed JSON document is dropped
// and returned for the log, and only then is the rest decoded.
package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Decode unmarshals the JSON document in out into v. When out as a whole is
// not valid JSON, it drops the lines that no pretty-printed JSON line starts
// like (notices, warnings) and decodes the rest; noise lists what was dropped,
// trimmed. Output with no JSON at all decodes as empty: ok is then false and v
// untouched. The error names the first dropped line when the rest is still
// not JSON.
func Decode(out []byte, v any) (noise []string, ok bool, err error) {
	trimmed := bytes.TrimSpace(out)
	if len(trimmed) == 0 {
		return nil, false, nil
	}
	if json.Valid(trimmed) {
		return nil, true, json.Unmarshal(trimmed, v)
	}
	var kept bytes.Buffer
	for _, line := range bytes.Split(trimmed, []byte("\n")) {
		t := bytes.TrimSpace(line)
		if len(t) == 0 || jsonLine(t) {
			kept.Write(line)
			kept.WriteByte('\n')
			continue
		}
		noise = append(noise, string(t))
	}
	rest := bytes.TrimSpace(kept.Bytes())
	if len(rest) == 0 {
		return noise, false, nil
	}
	if err := json.Unmarshal(rest, v); err != nil {
		if len(noise) > 0 {
			return noise, false, fmt.Errorf("%w (after dropping %d line(s) of text around the JSON, the first: %q)", err, len(noise), noise[0])
		}
		return noise, false, err
	}
	return noise, true, nil
}

// jsonLine reports whether a trimmed line can be a line of pretty-printed
// JSON: structure, a member ("key": ...), or a bare array element.
func jsonLine(t []byte) bool {
	switch c := t[0]; {
	case strings.IndexByte(`{}[]",`, c) >= 0:
		return true
	case c == '-' || c >= '0' && c <= '9':
		// A number element; notices never start with a digit.
		return json.Valid(bytes.TrimSuffix(t, []byte(",")))
	}
	s := string(bytes.TrimSuffix(t, []byte(",")))
	return s == "true" || s == "false" || s == "null"
}
