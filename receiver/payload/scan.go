package payload

import (
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// A strict JSON scanner: it accepts exactly what encoding/json accepts
// (RFC 8259, any byte from 0x20 up inside strings, nesting up to
// encoding/json's limit), so that encoding/json is needed only to explain a
// body it refuses. It works on string and []byte alike: entries are scanned
// as one string, and their fields are substrings of it, not copies.

type text interface{ ~string | ~[]byte }

// maxDepth is encoding/json's nesting limit: deeper is malformed for both.
const maxDepth = 10000

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace[T text](b T, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// scanValue checks the value at b[i] (no leading white space), inside
// depth containers, and returns the index just past it.
func scanValue[T text](b T, i, depth int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		end, _, ok := scanString(b, i)
		return end, ok
	case '{', '[':
		return scanNested(b, i, depth)
	}
	return scanLiteral(b, i)
}

// scanLiteral checks the number, true, false or null at b[i].
func scanLiteral[T text](b T, i int) (int, bool) {
	switch c := b[i]; {
	case c == '-' || isDigit(c):
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

// scanNested checks the object or array at b[i] like scanValue. It follows
// nested containers with a stack of their closing brackets, not by
// recursion, so that deep nesting costs no goroutine stack.
func scanNested[T text](b T, i, depth int) (int, bool) {
	var buf [32]byte
	open := buf[:0]
	for {
		// b[i] starts a value.
		if i >= len(b) {
			return 0, false
		}
		var ok bool
		switch c := b[i]; c {
		case '{', '[':
			if depth+len(open) >= maxDepth {
				return 0, false
			}
			closer := c + 2 // '}' and ']'
			if i = skipSpace(b, i+1); i < len(b) && b[i] == closer {
				i, ok = i+1, true
				break
			}
			open = append(open, closer)
			if c == '{' {
				if i, ok = scanKey(b, i); !ok {
					return 0, false
				}
			}
			continue // to the container's first value
		case '"':
			i, _, ok = scanString(b, i)
		default:
			i, ok = scanLiteral(b, i)
		}
		if !ok {
			return 0, false
		}
		// Past a value: close containers until one goes on.
		for {
			if len(open) == 0 {
				return i, true
			}
			if i = skipSpace(b, i); i >= len(b) {
				return 0, false
			}
			closer := open[len(open)-1]
			if b[i] == closer {
				open = open[:len(open)-1]
				i++
				continue
			}
			if b[i] != ',' {
				return 0, false
			}
			i = skipSpace(b, i+1)
			if closer == '}' {
				if i, ok = scanKey(b, i); !ok {
					return 0, false
				}
			}
			break
		}
	}
}

// scanKey checks the `"key" :` at b[i] and returns the index of the value
// after it.
func scanKey[T text](b T, i int) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return 0, false
	}
	end, _, ok := scanString(b, i)
	if !ok {
		return 0, false
	}
	if i = skipSpace(b, end); i >= len(b) || b[i] != ':' {
		return 0, false
	}
	return skipSpace(b, i+1), true
}

func scanWord[T text](b T, i int, w string) (int, bool) {
	if len(b)-i < len(w) || string(b[i:i+len(w)]) != w {
		return 0, false
	}
	return i + len(w), true
}

// strFlags says what a string the scanner accepted holds.
type strFlags uint8

const (
	escapedStr  strFlags = 1 << iota // a backslash escape
	nonASCIIStr                      // a byte from 0x80 up
	// plainASCII is plain's mark of the ASCII bytes that stand for
	// themselves; scanString does not return it.
	plainASCII
)

// scanString returns the index past the closing quote of the string at
// b[i], and what it holds.
func scanString[T text](b T, i int) (end int, f strFlags, ok bool) {
	for i++; i < len(b); i++ {
		if c := plain[b[i]]; c != 0 {
			f |= c
			continue
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1, f &^ plainASCII, true
		case c < 0x20:
			return 0, 0, false
		case c == '\\':
			f |= escapedStr
			i++
			if i >= len(b) {
				return 0, 0, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(b)-i < 5 {
					return 0, 0, false
				}
				for k := i + 1; k < i+5; k++ {
					if !isHex(b[k]) {
						return 0, 0, false
					}
				}
				i += 4
			default:
				return 0, 0, false
			}
		}
	}
	return 0, 0, false
}

// plain gives each byte that stands for itself inside a string its flags
// (plainASCII or nonASCIIStr), and 0 to the others: '"', '\\' and the
// control bytes.
var plain = func() (t [256]strFlags) {
	for c := 0x20; c < 256; c++ {
		switch {
		case c == '"' || c == '\\':
		case c < 0x80:
			t[c] = plainASCII
		default:
			t[c] = nonASCIIStr
		}
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
	// field is the key's when the scan resolved it (keyField): always for
	// a key with escapes, and past maxObjectRecords; else 0.
	field field
	// plainValue: the value is a string of ASCII bytes without escapes,
	// so it is the text between its quotes, valid UTF-8 and free of NUL.
	plainValue bool
	start, end int
	// parent is the index, in the same list, of the member whose object
	// value this member belongs to; -1 for the outermost object.
	parent int
}

// scanObject checks the object at b[i], depth containers deep, and appends
// its members to members, with parent as their parent, and those of objects
// nested in it down to levels objects deep in all: every member until the
// object holds maxObjectRecords records, then only those a reader looks
// up, the last of each key (keys.go). A key with escapes is recorded only
// when a reader looks it up.
func scanObject[T text](b T, i, depth int, members *[]member, parent, levels int) (int, bool) {
	if depth > maxDepth {
		return 0, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	// Once the object holds full records, sift sees every member (full
	// is 0 then); seen holds the fields it let in since.
	full := len(*members) + maxObjectRecords
	var seen fieldSet
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, false
		}
		m, ok := scanMemberKey(b, i, parent)
		if !ok {
			return 0, false
		}
		if (m.keyEscaped || len(*members) >= full) && !sift(b, members, &m, &full, &seen) {
			m.end, ok = scanValue(b, m.start, depth)
		} else if levels > 1 && m.start < len(b) && b[m.start] == '{' {
			k := len(*members)
			*members = append(*members, m)
			m.end, ok = scanObject(b, m.start, depth+1, members, k, levels-1)
			(*members)[k].end = m.end
		} else {
			ok = scanMemberValue(b, &m, depth)
			*members = append(*members, m)
		}
		if !ok {
			return 0, false
		}
		var closed bool
		if i, closed, ok = afterValue(b, m.end, '}'); !ok || closed {
			return i, ok
		}
	}
}

// sift decides whether to record m, a member of an object, when its key
// has escapes or the object holds full records: only when its key is one
// of fieldNames. From the second case on (full is 0 then, for good: a
// member dropped may take the records below it), the member of the same
// key that sift let in before, if seen (the fields it let in since) says
// there is one, goes.
func sift[T text](b T, members *[]member, m *member, full *int, seen *fieldSet) bool {
	if m.field = keyField(b, m); m.field == 0 {
		return false
	}
	if len(*members) >= *full {
		*full = 0
		*seen = recordOnce(members, *seen, m.field, m.parent)
	}
	return true
}

// recordOnce makes room for a member of parent whose key is f, about to be
// appended to members: when seen holds f, the last member of that key
// recorded goes. It returns seen with f.
func recordOnce(members *[]member, seen fieldSet, f field, parent int) fieldSet {
	if seen&(1<<f) != 0 {
		dropMember(members, parent, f)
	}
	return seen | 1<<f
}

// scanArray checks the array at b[i], depth containers deep, and appends
// the spans of its first limit elements to elems; n counts them all.
func scanArray[T text](b T, i, depth int, elems *[][2]int, limit int) (end, n int, ok bool) {
	if depth > maxDepth {
		return 0, 0, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, 0, true
	}
	for {
		start := i
		end, ok := scanValue(b, start, depth)
		if !ok {
			return 0, 0, false
		}
		if n < limit {
			*elems = append(*elems, [2]int{start, end})
		}
		n++
		var closed bool
		if i, closed, ok = afterValue(b, end, ']'); !ok || closed {
			return i, n, ok
		}
	}
}

// scanMemberKey is scanKey keeping what a member records: where the key at
// b[i] (its opening quote) ends, whether it has escapes, and where the
// value after its colon starts.
func scanMemberKey[T text](b T, i, parent int) (member, bool) {
	m := member{key: i, parent: parent}
	var ok bool
	var f strFlags
	if m.keyEnd, f, ok = scanString(b, i); !ok {
		return m, false
	}
	m.keyEscaped = f&escapedStr != 0
	i = skipSpace(b, m.keyEnd)
	if i >= len(b) || b[i] != ':' {
		return m, false
	}
	m.start = skipSpace(b, i+1)
	return m, true
}

// scanMemberValue checks m's value, depth containers deep, and records
// where it ends and whether it is a plain string.
func scanMemberValue[T text](b T, m *member, depth int) bool {
	if m.start < len(b) && b[m.start] == '"' {
		end, f, ok := scanString(b, m.start)
		m.end, m.plainValue = end, f == 0
		return ok
	}
	var ok bool
	m.end, ok = scanValue(b, m.start, depth)
	return ok
}

// afterValue reads what follows a member or element that ends at b[i]:
// a comma (next is the start of the one after it) or the container's
// closing byte (closed, next is past it). ok is false for anything else.
func afterValue[T text](b T, i int, closing byte) (next int, closed, ok bool) {
	i = skipSpace(b, i)
	if i >= len(b) {
		return 0, false, false
	}
	switch b[i] {
	case ',':
		return skipSpace(b, i+1), false, true
	case closing:
		return i + 1, true, true
	}
	return 0, false, false
}

// unquoteValid decodes the JSON string s (quotes included), which the
// scanner accepted, as encoding/json does: escapes resolved, invalid UTF-8
// and unpaired surrogates each replaced by U+FFFD. The bool says whether
// s was valid text: no invalid UTF-8 and no unpaired \u surrogate, so
// nothing was replaced.
func unquoteValid(s string) (string, bool) {
	s = s[1 : len(s)-1]
	valid := true
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == '\\' && s[i+1] == 'u':
			r := hex4(s[i+2 : i+6])
			i += 6
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if len(s)-i >= 6 && s[i] == '\\' && s[i+1] == 'u' {
					r2 = hex4(s[i+2 : i+6])
				}
				if r = utf16.DecodeRune(r, r2); r != utf8.RuneError {
					i += 6 // the pair's second half
				} else {
					valid = false
				}
			}
			b.WriteRune(r)
		case c == '\\':
			b.WriteByte(unescape[s[i+1]])
			i += 2
		case c < utf8.RuneSelf:
			b.WriteByte(c)
			i++
		default:
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				valid = false
			}
			b.WriteRune(r)
			i += n
		}
	}
	return b.String(), valid
}

// unescape maps the byte after a backslash to the byte it stands for.
var unescape = [256]byte{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}

// hex4 reads four hex digits the scanner checked.
func hex4(s string) rune {
	var r rune
	for i := range 4 {
		c := rune(s[i])
		switch {
		case c <= '9':
			c -= '0'
		case c >= 'a':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		r = r<<4 | c
	}
	return r
}
