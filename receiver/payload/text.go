package payload

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

const msgHidden = "must not contain control or invisible characters (such as U+200B ZERO WIDTH SPACE)"

// hidden reports whether s holds a control character (Cc) or an invisible
// format character (Cf: zero-width spaces and joiners, U+FEFF, the soft
// hyphen, bidirectional marks).
func hidden(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf {
			return strings.IndexFunc(s[i:], isHidden) >= 0
		} else if c < ' ' || c == 0x7f {
			return true
		}
	}
	return false
}

// blank reports whether s shows nothing: white space, control and format
// characters only. strings.TrimSpace leaves the last two, so a required
// field of one zero-width space would otherwise pass as filled.
func blank(s string) bool {
	if s != "" && ' ' < s[0] && s[0] < 0x7f {
		return false // the usual case: a visible ASCII character first
	}
	return strings.IndexFunc(s, func(c rune) bool { return !unicode.IsSpace(c) && !isHidden(c) }) < 0
}

func isHidden(c rune) bool { return unicode.In(c, unicode.Cc, unicode.Cf) }
