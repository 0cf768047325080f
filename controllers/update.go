package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// This file is the create-or-update of one child object. It writes only
// when a field the operator sets differs from the stored object, and then
// changes only those fields: the API server's defaults, annotations and
// labels others add, and any field the operator leaves unset (such as
// replicas under an autoscaler) are kept. A hand edit of a field the
// operator sets is put back.

// applyResult says what apply did.
type applyResult string

const (
	applyUnchanged applyResult = "unchanged"
	applyCreated   applyResult = "created"
	applyUpdated   applyResult = "updated"
)

// ownershipConflictError: the child's name is taken by an object another
// controller controls; the operator will not take it over.
type ownershipConflictError struct {
	kind, name, owner string
}

func (e *ownershipConflictError) Error() string {
	return fmt.Sprintf("%s %s is controlled by %s, not by this EHRIntegration", e.kind, e.name, e.owner)
}

// apply makes the stored object named like desired match desired in its
// labels, annotations, controller reference and the top-level fields given
// (e.g. "spec"). It returns the object as stored afterwards.
func apply(ctx context.Context, c client.Client, scheme *runtime.Scheme, owner *v1alpha1.EHRIntegration,
	desired client.Object, fields ...string) (client.Object, applyResult, error) {
	kind := reflect.TypeOf(desired).Elem().Name()
	existing := newEmpty(desired)
	err := c.Get(ctx, client.ObjectKeyFromObject(desired), existing)
	if apierrors.IsNotFound(err) {
		if err := setAppliedHash(desired, nil, fields); err != nil {
			return nil, "", fmt.Errorf("while hashing desired %s %s: %w", kind, desired.GetName(), err)
		}
		if err := controllerutil.SetControllerReference(owner, desired, scheme); err != nil {
			return nil, "", fmt.Errorf("while setting the owner of %s %s: %w", kind, desired.GetName(), err)
		}
		if err := c.Create(ctx, desired); err != nil {
			return nil, "", fmt.Errorf("while creating %s %s: %w", kind, desired.GetName(), err)
		}
		return desired, applyCreated, nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("while getting %s %s: %w", kind, desired.GetName(), err)
	}
	if ref := metav1.GetControllerOf(existing); ref != nil && ref.UID != owner.UID {
		return nil, "", &ownershipConflictError{kind: kind, name: desired.GetName(), owner: ref.Kind + " " + ref.Name}
	}

	want, err := runtime.DefaultUnstructuredConverter.ToUnstructured(desired)
	if err != nil {
		return nil, "", fmt.Errorf("while converting desired %s %s: %w", kind, desired.GetName(), err)
	}
	if err := setAppliedHash(desired, want, fields); err != nil {
		return nil, "", fmt.Errorf("while hashing desired %s %s: %w", kind, desired.GetName(), err)
	}
	work := existing.DeepCopyObject().(client.Object)
	changed := mergeMetadata(work, desired)
	if metav1.GetControllerOf(work) == nil {
		// An orphan with our child's name is adopted, as a ReplicaSet adopts pods.
		if err := controllerutil.SetControllerReference(owner, work, scheme); err != nil {
			return nil, "", fmt.Errorf("while adopting %s %s: %w", kind, desired.GetName(), err)
		}
		changed = true
	}
	got, err := runtime.DefaultUnstructuredConverter.ToUnstructured(work)
	if err != nil {
		return nil, "", fmt.Errorf("while converting %s %s: %w", kind, desired.GetName(), err)
	}
	var differing []string
	for _, f := range fields {
		// A changed applied-hash means the spec changed: rewrite every
		// field, so that values the operator no longer sets are dropped.
		if changed || !covers(got[f], want[f]) {
			differing = append(differing, f)
		}
	}
	if !changed && len(differing) == 0 {
		return existing, applyUnchanged, nil
	}

	update := func(replace bool) (client.Object, error) {
		u := runtime.DeepCopyJSON(got)
		for _, f := range differing {
			if replace {
				u[f] = runtime.DeepCopyJSONValue(want[f])
			} else {
				u[f] = overlay(u[f], want[f])
			}
		}
		obj := newEmpty(desired)
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u, obj); err != nil {
			return nil, fmt.Errorf("while converting %s %s back: %w", kind, desired.GetName(), err)
		}
		return obj, c.Update(ctx, obj)
	}
	obj, err := update(false)
	if apierrors.IsInvalid(err) {
		// Keeping others' fields gave an invalid object (say a volume that
		// now has two sources): take the operator's fields as they are.
		obj, err = update(true)
	}
	if err != nil {
		return nil, "", fmt.Errorf("while updating %s %s: %w", kind, desired.GetName(), err)
	}
	return obj, applyUpdated, nil
}

// deleteOwned deletes the object named like obj when owner controls it;
// one it does not control is left alone. It reports whether it deleted.
func deleteOwned(ctx context.Context, c client.Client, owner *v1alpha1.EHRIntegration, obj client.Object) (bool, error) {
	kind := reflect.TypeOf(obj).Elem().Name()
	if err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("while getting %s %s: %w", kind, obj.GetName(), err)
	}
	if ref := metav1.GetControllerOf(obj); ref == nil || ref.UID != owner.UID {
		return false, nil
	}
	uid := obj.GetUID()
	if err := c.Delete(ctx, obj, client.Preconditions{UID: &uid}); client.IgnoreNotFound(err) != nil {
		return false, fmt.Errorf("while deleting %s %s: %w", kind, obj.GetName(), err)
	}
	return true, nil
}

// setAppliedHash records on desired a hash of the fields the operator sets
// (want is desired as unstructured, or nil to convert it here). On the next
// pass a different hash says the spec changed even when the change only
// removed values, which covers cannot see.
func setAppliedHash(desired client.Object, want map[string]any, fields []string) error {
	if want == nil {
		var err error
		if want, err = runtime.DefaultUnstructuredConverter.ToUnstructured(desired); err != nil {
			return err
		}
	}
	h := sha256.New()
	for _, f := range fields {
		b, err := json.Marshal(want[f])
		if err != nil {
			return err
		}
		_, _ = fmt.Fprintf(h, "%s:%d:", f, len(b))
		_, _ = h.Write(b)
	}
	a := desired.GetAnnotations()
	if a == nil {
		a = map[string]string{}
	}
	a[annotationAppliedHash] = hex.EncodeToString(h.Sum(nil))[:16]
	desired.SetAnnotations(a)
	return nil
}

// newEmpty returns a new zero object of obj's Go type.
func newEmpty(obj client.Object) client.Object {
	return reflect.New(reflect.TypeOf(obj).Elem()).Interface().(client.Object)
}

// mergeMetadata sets desired's labels and annotations on obj, keeping the
// keys others set, and drops annotations the operator set before but no
// longer wants (those listed in annotationManagedAnnotations). It reports
// whether obj changed.
func mergeMetadata(obj, desired client.Object) bool {
	labels, lc := mergeStrings(obj.GetLabels(), desired.GetLabels(), nil)
	var stale []string
	if old, ok := obj.GetAnnotations()[annotationManagedAnnotations]; ok && old != "" {
		for _, k := range strings.Split(old, ",") {
			if _, keep := desired.GetAnnotations()[k]; !keep {
				stale = append(stale, k)
			}
		}
	}
	annotations, ac := mergeStrings(obj.GetAnnotations(), desired.GetAnnotations(), stale)
	if lc {
		obj.SetLabels(labels)
	}
	if ac {
		obj.SetAnnotations(annotations)
	}
	return lc || ac
}

// mergeStrings returns have with want's entries set and drop's keys
// removed, and whether that differs from have.
func mergeStrings(have, want map[string]string, drop []string) (map[string]string, bool) {
	out := make(map[string]string, len(have)+len(want))
	for k, v := range have {
		out[k] = v
	}
	changed := false
	for _, k := range drop {
		if _, ok := out[k]; ok {
			delete(out, k)
			changed = true
		}
	}
	for k, v := range want {
		if cur, ok := out[k]; !ok || cur != v {
			out[k] = v
			changed = true
		}
	}
	return out, changed
}

// covers reports whether every value set in want (an unstructured value:
// map, list or scalar) is the same in got. Map keys absent from want are
// not the operator's and are ignored; lists must have the same length.
func covers(got, want any) bool {
	switch w := want.(type) {
	case nil:
		return true
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return false
		}
		for k, wv := range w {
			if !covers(g[k], wv) {
				return false
			}
		}
		return true
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for i := range w {
			if !covers(g[i], w[i]) {
				return false
			}
		}
		return true
	default:
		return reflect.DeepEqual(got, want)
	}
}

// overlay returns got with want's values written over it: maps are merged
// key by key, lists of the same length element by element (when elements
// have the same "name", or none), anything else is replaced by want.
func overlay(got, want any) any {
	switch w := want.(type) {
	case nil:
		return got
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return runtime.DeepCopyJSONValue(w)
		}
		out := make(map[string]any, len(g)+len(w))
		for k, v := range g {
			out[k] = v
		}
		for k, wv := range w {
			switch {
			case wv == nil:
			case k == "resources":
				// Compute resources are the operator's as a whole: a request
				// removed from the spec goes from the container too.
				out[k] = runtime.DeepCopyJSONValue(wv)
			default:
				out[k] = overlay(g[k], wv)
			}
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return runtime.DeepCopyJSONValue(w)
		}
		out := make([]any, len(w))
		for i := range w {
			gm, gok := g[i].(map[string]any)
			wm, wok := w[i].(map[string]any)
			if gok && wok && gm["name"] == wm["name"] {
				out[i] = overlay(gm, wm)
			} else {
				out[i] = runtime.DeepCopyJSONValue(w[i])
			}
		}
		return out
	default:
		return want
	}
}
