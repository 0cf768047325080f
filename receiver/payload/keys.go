package payload

// What the scanner records of an object must not grow with the body: a
// body of members nobody reads ("":0, five bytes each) once cost 48 bytes
// of records for every five bytes, more than the receiver budgets a body
// byte for everything (sizing.PerBodyByte, 10). The readers look up only
// the keys of fieldNames ("appointments" and "appointment", and every key
// readEntry reads at any level), and the last of duplicate keys wins. So
// scanObject records every member only until an object holds
// maxObjectRecords records (those of its objects included), which no
// entry of the spec's shape comes near (29 for the whole entry); from then
// on it records only a member of fieldNames, and drops the earlier one of
// the same key it recorded so (the readers find the last one in any
// case). Nothing a reader finds changes, so no answer does. An object of
// the entry (one level down) then holds at most maxObjectRecords+24
// records, and an entry at most 64+88+24×89 = 2,288 (110 KB), whatever its
// size; the body's scan and Validate reuse one list from entry to entry. A
// key with escapes, rare, is resolved as it is scanned and recorded only
// when it is one of fieldNames.

// maxObjectRecords is how many records of an object are kept as they come.
const maxObjectRecords = 64

// field is a key of fieldNames by its index; 0 is any other key.
type field uint8

// fieldNames are the keys the readers look up, at their index as a field,
// none longer than maxNameLen. TestFieldNamesAreTheKeysRead holds them to
// what readEntry reads.
var fieldNames = [...]string{
	"", "appointments", "appointment", "patient", "practitioner", "location", "encounter", "department_id",
	"id", "type", "status", "start_time", "created_time", "start_date", "duration", "reason", "notes",
	"first_name", "middle_name", "last_name", "gender", "phone", "email", "birth_date", "name",
}

// The fields Decode and DecodeValidate look for.
const (
	fieldAppointments field = 1
	fieldAppointment  field = 2
)

// fieldSet is a set of fields: one bit each.
type fieldSet uint32

var _ = [32 - len(fieldNames)]struct{}{} // every field has a bit in a fieldSet

// fieldOf is the field named name, 0 for none.
func fieldOf(name string) field { return fieldIndex[name] }

// fieldIndex is the field of each of fieldNames.
var fieldIndex = func() map[string]field {
	m := make(map[string]field, len(fieldNames)-1)
	for f, name := range fieldNames[1:] {
		m[name] = field(f + 1)
	}
	return m
}()

// maxNameLen is the length of the longest of fieldNames.
const maxNameLen = len("department_id")

// escapedKeyField is the field of the key s (quotes excluded), which the
// scanner accepted and which holds a backslash escape, decoded as
// unquote decodes it but without allocating: the names are ASCII, so a key
// that decodes to anything else (an escape from U+0080 up, a byte from
// 0x80 up, replaced or not) names none.
func escapedKeyField[T text](s T) field {
	var buf [maxNameLen]byte
	n := 0
	for i := 0; i < len(s); n++ {
		if n == len(buf) {
			return 0
		}
		switch c := s[i]; {
		case c == '\\' && s[i+1] == 'u':
			r := hex4(string(s[i+2 : i+6]))
			if r >= 0x80 {
				return 0
			}
			buf[n] = byte(r)
			i += 6
		case c == '\\':
			buf[n] = unescape[s[i+1]]
			i += 2
		case c >= 0x80:
			return 0
		default:
			buf[n] = c
			i++
		}
	}
	return fieldOf(string(buf[:n]))
}

// keyField is the field m's key names, 0 for none.
func keyField[T text](b T, m *member) field {
	s := b[m.key+1 : m.keyEnd-1]
	switch {
	case m.keyEscaped:
		return escapedKeyField(s)
	case len(s) > maxNameLen:
		return 0 // and no string made of a long key
	}
	return fieldOf(string(s))
}

// dropMember removes from members the last member of parent whose key is
// f (there must be one), with the members of its objects; the members
// after them move down, their parents too. A later member of the same key
// takes its place at the end, as a map keeps the last of duplicate keys.
func dropMember(members *[]member, parent int, f field) {
	ms := *members
	at := len(ms) - 1
	for ms[at].parent != parent || ms[at].field != f {
		at--
	}
	// Its objects' members follow it, their parents at it or after it;
	// the next member of parent ends them.
	n := 1
	for at+n < len(ms) && ms[at+n].parent >= at {
		n++
	}
	rest := ms[at+n:]
	for k := range rest {
		if rest[k].parent > at {
			rest[k].parent -= n
		}
	}
	*members = append(ms[:at], rest...)
}
