package payload

// A strict JSON scanner for the fast paths. It accepts only what
// encoding/json accepts (RFC 8259, any byte from 0x20 up inside strings),
// never more: whatever it refuses goes to the encoding/json reference
// implementation, so its errors and offsets stay encoding/json's. It works
// on string and []byte alike, so that entries are scanned as one string and
// their fields are substrings of it, not copies.

type text interface{ ~string | ~[]byte }

// maxDepth bounds the nesting the fast path follows; deeper documents go to
// encoding/json, which has its own limit.
const maxDepth = 256

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace[T text](b T, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// scanValue checks the value starting at b[i] (no leading white space) and
// returns the index just past it.
func scanValue[T text](b T, i, depth int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch c := b[i]; {
	case c == '"':
		end, _, ok := scanString(b, i)
		return end, ok
	case c == '{':
		return scanObject(b, i, depth+1, nil, 0, 0)
	case c == '[':
		return scanArray(b, i, depth+1, nil)
	case c == '-' || (c >= '0' && c <= '9'):
		return scanNumber(b, i)
	case c == 't':
		return scanWord(b, i, "true")
	case c == 'f':
		return scanWord(b, i, "false")
	case c == 'n':
		return scanWord(b, i, "null")
	}
	return 0, false
}

func scanWord[T text](b T, i int, w string) (int, bool) {
	if len(b)-i < len(w) || string(b[i:i+len(w)]) != w {
		return 0, false
	}
	return i + len(w), true
}

// scanString returns the index past the closing quote of the string at
// b[i], and whether it contains an escape.
func scanString[T text](b T, i int) (end int, escaped, ok bool) {
	for i++; i < len(b); i++ {
		if plain[b[i]] {
			continue
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1, escaped, true
		case c < 0x20:
			return 0, false, false
		case c == '\\':
			escaped = true
			i++
			if i >= len(b) {
				return 0, false, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(b)-i < 5 {
					return 0, false, false
				}
				for k := i + 1; k < i+5; k++ {
					if !isHex(b[k]) {
						return 0, false, false
					}
				}
				i += 4
			default:
				return 0, false, false
			}
		}
	}
	return 0, false, false
}

// plain marks the bytes that stand for themselves inside a string.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// scanNumber checks -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func scanNumber[T text](b T, i int) (int, bool) {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && isDigit(b[i]):
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	default:
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return 0, false
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return 0, false
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	return i, true
}

// member is one key of an object with its value's span [start, end).
type member struct {
	key        int // index of the key's opening quote
	keyEnd     int // index past its closing quote
	keyEscaped bool
	start, end int
	// parent is the index, in the same list, of the member whose object
	// value this member belongs to; -1 for the outermost object.
	parent int
}

// scanObject checks the object at b[i] and, when members is not nil,
// appends its members to it, with parent as their parent, and those of
// objects nested in it down to levels objects deep in all.
func scanObject[T text](b T, i, depth int, members *[]member, parent, levels int) (int, bool) {
	if depth > maxDepth {
		return 0, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, false
		}
		m := member{key: i, parent: parent}
		var ok bool
		if m.keyEnd, m.keyEscaped, ok = scanString(b, i); !ok {
			return 0, false
		}
		i = skipSpace(b, m.keyEnd)
		if i >= len(b) || b[i] != ':' {
			return 0, false
		}
		m.start = skipSpace(b, i+1)
		switch {
		case members == nil:
			m.end, ok = scanValue(b, m.start, depth)
		case levels > 1 && m.start < len(b) && b[m.start] == '{':
			k := len(*members)
			*members = append(*members, m)
			m.end, ok = scanObject(b, m.start, depth+1, members, k, levels-1)
			(*members)[k].end = m.end
		default:
			m.end, ok = scanValue(b, m.start, depth)
			*members = append(*members, m)
		}
		if !ok {
			return 0, false
		}
		i = skipSpace(b, m.end)
		if i >= len(b) {
			return 0, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return i + 1, true
		default:
			return 0, false
		}
	}
}

// scanArray checks the array at b[i] and, when elems is not nil, appends
// the spans of its elements to it.
func scanArray[T text](b T, i, depth int, elems *[][2]int) (int, bool) {
	if depth > maxDepth {
		return 0, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, true
	}
	for {
		start := i
		end, ok := scanValue(b, start, depth)
		if !ok {
			return 0, false
		}
		if elems != nil {
			*elems = append(*elems, [2]int{start, end})
		}
		i = skipSpace(b, end)
		if i >= len(b) {
			return 0, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case ']':
			return i + 1, true
		default:
			return 0, false
		}
	}
}
