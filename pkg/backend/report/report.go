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

// jsonLine reports whether a trimmed line can be a line of a JSON document
// split between tokens: it starts with a token (structure, `:`, a string, a
// number or a literal) and a number or literal is followed by nothing or by
// what may follow a value (`,`, `]`, `}`). JSON allows a line break before
// any token (RFC 8259 section 2), so this is wider than the pretty-printers'
// one-member-per-line form: FuzzDecode found a document split before a `:`
// that the narrower rule dropped as a notice.
func jsonLine(t []byte) bool {
	if strings.IndexByte(`{}[]",:`, t[0]) >= 0 {
		return true
	}
	var rest []byte
	switch {
	case t[0] == '-' || t[0] >= '0' && t[0] <= '9':
		n := numberLen(t)
		if n == 0 {
			return false
		}
		rest = t[n:]
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if bytes.HasPrefix(t, []byte(lit)) {
				rest = t[len(lit):]
				break
			}
		}
		if rest == nil {
			return false
		}
	}
	// A notice may start with a number or a word ("1 device found",
	// "null pointer"): only what may follow a value makes it JSON.
	rest = bytes.TrimLeft(rest, " \t\r")
	return len(rest) == 0 || strings.IndexByte(",]}", rest[0]) >= 0
}

// numberLen is the length of the JSON number (RFC 8259 section 6) that t
// starts with, 0 when there is none.
func numberLen(t []byte) int {
	i := 0
	if i < len(t) && t[i] == '-' {
		i++
	}
	switch {
	case i < len(t) && t[i] == '0':
		i++
	case i < len(t) && t[i] >= '1' && t[i] <= '9':
		for i < len(t) && t[i] >= '0' && t[i] <= '9' {
			i++
		}
	default:
		return 0
	}
	digits := func() bool {
		j := i
		for i < len(t) && t[i] >= '0' && t[i] <= '9' {
			i++
		}
		return i > j
	}
	if i < len(t) && t[i] == '.' {
		i++
		if !digits() {
			return 0
		}
	}
	if i < len(t) && (t[i] == 'e' || t[i] == 'E') {
		i++
		if i < len(t) && (t[i] == '+' || t[i] == '-') {
			i++
		}
		if !digits() {
			return 0
		}
	}
	return i
}
