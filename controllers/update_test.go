package controllers

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestCovers(t *testing.T) {
	m := func(kv ...any) map[string]any {
		out := map[string]any{}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i].(string)] = kv[i+1]
		}
		return out
	}
	tests := []struct {
		name      string
		got, want any
		covered   bool
	}{
		{"unset in want is not ours", m("a", int64(1)), m("b", nil), true},
		{"extra keys in got are kept", m("a", int64(1), "server", "default"), m("a", int64(1)), true},
		{"scalar differs", m("a", int64(1)), m("a", int64(2)), false},
		{"key missing in got", m(), m("a", "x"), false},
		{"nested differs", m("s", m("x", true)), m("s", m("x", false)), false},
		{"empty map wanted, absent", m(), m("emptyDir", m()), false},
		{"list same", m("l", []any{"a", "b"}), m("l", []any{"a", "b"}), true},
		{"list longer in got", m("l", []any{"a", "b"}), m("l", []any{"a"}), false},
		{"list element subset", m("l", []any{m("name", "c", "default", int64(1))}), m("l", []any{m("name", "c")}), true},
		{"list element differs", m("l", []any{m("name", "c")}), m("l", []any{m("name", "d")}), false},
	}
	for _, tt := range tests {
		if got := covers(tt.got, tt.want); got != tt.covered {
			t.Errorf("%s: covers = %v, want %v", tt.name, got, tt.covered)
		}
	}
}

func TestOverlay(t *testing.T) {
	got := map[string]any{
		"replicas": int64(7), // an autoscaler's; the operator leaves it unset
		"template": map[string]any{"containers": []any{map[string]any{
			"name": "receiver", "image": "old", "terminationMessagePath": "/dev/termination-log",
			"resources": map[string]any{"requests": map[string]any{"cpu": "1", "memory": "1Gi"}},
		}}},
		"volumes": []any{map[string]any{"name": "a", "configMap": map[string]any{"name": "x"}}},
	}
	want := map[string]any{
		"template": map[string]any{"containers": []any{map[string]any{
			"name": "receiver", "image": "new",
			"resources": map[string]any{"requests": map[string]any{"memory": "64Mi"}},
		}}},
		"volumes": []any{map[string]any{"name": "b", "secret": map[string]any{"secretName": "s"}}},
	}
	wantOut := map[string]any{
		"replicas": int64(7),
		"template": map[string]any{"containers": []any{map[string]any{
			"name": "receiver", "image": "new", "terminationMessagePath": "/dev/termination-log",
			// resources are replaced whole: cpu, no longer in the spec, goes.
			"resources": map[string]any{"requests": map[string]any{"memory": "64Mi"}},
		}}},
		// A differently named element is replaced, not merged.
		"volumes": []any{map[string]any{"name": "b", "secret": map[string]any{"secretName": "s"}}},
	}
	out := overlay(got, want)
	if diff := cmp.Diff(wantOut, out); diff != "" {
		t.Errorf("overlay mismatch (-want +got):\n%s", diff)
	}
	if !covers(out, want) {
		t.Error("overlay's result does not cover want")
	}
	if got["template"].(map[string]any)["containers"].([]any)[0].(map[string]any)["image"] != "old" {
		t.Error("overlay modified its input")
	}
}

func TestMergeMetadata(t *testing.T) {
	obj := &corev1.Service{ObjectMeta: metav1.ObjectMeta{
		Labels: map[string]string{"app.kubernetes.io/name": "ehr-receiver", "team": "sre"},
		Annotations: map[string]string{
			annotationManagedAnnotations: "cert,old",
			"cert":                       "v1", "old": "x", "foreign": "kept",
		},
	}}
	desired := &corev1.Service{ObjectMeta: metav1.ObjectMeta{
		Labels:      map[string]string{"app.kubernetes.io/name": "ehr-receiver"},
		Annotations: map[string]string{annotationManagedAnnotations: "cert", "cert": "v2"},
	}}
	if !mergeMetadata(obj, desired) {
		t.Fatal("mergeMetadata reported no change")
	}
	wantAnn := map[string]string{annotationManagedAnnotations: "cert", "cert": "v2", "foreign": "kept"}
	if diff := cmp.Diff(wantAnn, obj.Annotations); diff != "" {
		t.Errorf("annotations mismatch (-want +got):\n%s", diff)
	}
	if obj.Labels["team"] != "sre" {
		t.Errorf("foreign label lost: %v", obj.Labels)
	}
	if mergeMetadata(obj, desired) {
		t.Error("second mergeMetadata reported a change")
	}
}
