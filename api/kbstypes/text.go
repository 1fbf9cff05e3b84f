package kbstypes

import "strings"

// SafeText makes text that came over the wire (problem details, claims a
// guest chose, audit entries) safe to print: valid UTF-8 and no control
// characters, so it cannot carry terminal escape sequences. Both sides print
// such text: the agent quotes the KBS's errors, kbsctl quotes guests' claims.
func SafeText(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
}
