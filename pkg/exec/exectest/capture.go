package exectest

import (
	"fmt"
	"strconv"
	"strings"
)

// Section is one part of a capture file: a "-- key --" line and the lines up
// to the next such line. Backends record real tool runs in this format.
type Section struct {
	Key, Body string
}

// SplitSections splits a capture file into its sections, in order.
func SplitSections(data []byte) []Section {
	var out []Section
	for _, line := range strings.SplitAfter(string(data), "\n") {
		if k, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "-- "); ok && strings.HasSuffix(k, " --") {
			out = append(out, Section{Key: strings.TrimSuffix(k, " --")})
			continue
		}
		if len(out) > 0 {
			out[len(out)-1].Body += line
		}
	}
	return out
}

// CallKey splits a per-call key "N.field"; n must be an index already seen or
// the next one (calls are numbered from 0 in order).
func CallKey(key string, seen int) (n int, field string, err error) {
	num, field, ok := strings.Cut(key, ".")
	n, err = strconv.Atoi(num)
	if !ok || err != nil || n < 0 || n > seen {
		return 0, "", fmt.Errorf("bad section %q", key)
	}
	return n, field, nil
}
