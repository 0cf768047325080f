package chartdocs

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	in := `# header, not a value

# -- Name of it.
name: ""
image:
  # -- The repository,
  # on two lines.
  repository: r
  # -- A port.
  port: 8080
# Some note.
# -- Security settings.
security:
  runAsNonRoot: true
# -- Nothing.
list: []
`
	got, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Value{
		{Key: "name", Type: "string", Default: `""`, Description: "Name of it."},
		{Key: "image.repository", Type: "string", Default: `"r"`, Description: "The repository, on two lines."},
		{Key: "image.port", Type: "int", Default: "8080", Description: "A port."},
		{Key: "security", Type: "object", Default: `{"runAsNonRoot":true}`, Description: "Security settings."},
		{Key: "list", Type: "list", Default: "[]", Description: "Nothing."},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
}

func TestParseRefusesUndocumentedValue(t *testing.T) {
	for _, in := range []string{
		"# plain comment\nname: x\n",
		"group:\n  # -- ok\n  a: 1\n  b: 2\n",
		"empty: {}\n",
	} {
		if _, err := Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), "no \"# --\" comment") {
			t.Errorf("Parse(%q) = %v, want an error about the missing comment", in, err)
		}
	}
}

func TestUpdate(t *testing.T) {
	readme := "intro\n" + BeginMarker + "\nold\n" + EndMarker + "\nend\n"
	got, err := Update([]byte(readme), "| t |\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := "intro\n" + BeginMarker + "\n| t |\n" + EndMarker + "\nend\n"; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if _, err := Update([]byte("no markers"), ""); err == nil {
		t.Error("Update without markers succeeded")
	}
}
