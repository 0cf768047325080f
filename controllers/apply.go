package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/util/csaupgrade"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// Children are written with server-side apply: the operator's field
// manager owns exactly the fields the builders set, with forced ownership,
// so the API server keeps others' labels, annotations and fields, its own
// defaults, and an autoscaler's replicas, and drops a value the operator
// no longer sets. A hand edit of an operator field moves that field to
// the editor's manager; the next pass sees it missing from the operator's
// fields and applies again.

// fieldOwner is the operator's field manager.
const fieldOwner = "ehr-operator"

// suspendFieldOwner owns the replicas of a Deployment scaled to zero
// (suspended, or a DuplicateEHR), so that this touches no other field and
// the next apply takes them back.
const suspendFieldOwner = "ehr-operator-suspend"

// legacyFieldManager is the manager that children written by Create and
// Update before server-side apply carry: the operator binary's name, taken
// from its user agent. Its fields are handed to fieldOwner once (see
// upgradeManagedFields), so values that only it set can be dropped.
const legacyFieldManager = "ehr-operator"

// applyConfiguration is what the builders return for one child kind.
type applyConfiguration interface {
	runtime.ApplyConfiguration
	GetName() *string
	GetNamespace() *string
}

// applyResult says what applyChild did.
type applyResult string

const (
	applyUnchanged applyResult = "unchanged"
	applyCreated   applyResult = "created"
	applyUpdated   applyResult = "updated"
)

// ownershipConflictError: the child's name is taken by an object another
// controller controls, or that no controller controls and the operator did
// not make (owner empty); the operator will not take it over.
type ownershipConflictError struct {
	kind, name, owner string
}

func (e *ownershipConflictError) Error() string {
	if e.owner == "" {
		return fmt.Sprintf("%s %s exists and was not made by the operator for this EHRIntegration (it lacks the labels %s=%s and %s=<name>); rename or delete it",
			e.kind, e.name, labelManagedBy, operatorName, labelInstance)
	}
	return fmt.Sprintf("%s %s is controlled by %s, not by this EHRIntegration", e.kind, e.name, e.owner)
}

// applyChild makes the stored child named like desired carry desired's
// fields, and returns it as stored. live is an empty object of the child's
// kind, and extract the client-go function that reads the fields a manager
// owns of it. It sends nothing when the operator's fields of the cached
// object already equal desired, so a resync of a settled child makes no
// request. adjust, if not nil, may change desired once the stored child
// and the operator's fields of it are known.
func applyChild[O client.Object, AC applyConfiguration](ctx context.Context, c client.Client, owner *v1alpha1.EHRIntegration,
	desired AC, live O, extract func(O, string) (AC, error), adjust func(live O, owned AC)) (O, applyResult, error) {
	var none O
	kind := reflect.TypeOf(live).Elem().Name()
	name := *desired.GetName()
	res := applyCreated
	err := c.Get(ctx, types.NamespacedName{Namespace: *desired.GetNamespace(), Name: name}, live)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return none, "", fmt.Errorf("while getting %s %s: %w", kind, name, err)
	default:
		// An orphan the operator made for this resource (its owner
		// reference removed, say by a delete with --cascade=orphan) is
		// adopted, as a ReplicaSet adopts pods: desired carries the
		// controller reference. An object someone else made with the same
		// name is not: applying would rewrite it (a Service's selector, a
		// shared ServiceAccount's token setting) and garbage collection
		// would delete it with the resource.
		ref := metav1.GetControllerOf(live)
		switch {
		case ref != nil && ref.UID != owner.UID:
			return none, "", &ownershipConflictError{kind: kind, name: name, owner: ref.Kind + " " + ref.Name}
		case ref == nil && (live.GetLabels()[labelManagedBy] != operatorName || live.GetLabels()[labelInstance] != owner.Name):
			return none, "", &ownershipConflictError{kind: kind, name: name}
		}
		if err := upgradeManagedFields(ctx, c, live); err != nil {
			return none, "", fmt.Errorf("while handing the fields of %s %s to %s: %w", kind, name, fieldOwner, err)
		}
		owned, err := extract(live, fieldOwner)
		if err != nil {
			return none, "", fmt.Errorf("while reading the operator's fields of %s %s: %w", kind, name, err)
		}
		if adjust != nil {
			adjust(live, owned)
		}
		if equality.Semantic.DeepEqual(owned, desired) {
			return live, applyUnchanged, nil
		}
		res = applyUpdated
	}
	if err := c.Apply(ctx, desired, client.FieldOwner(fieldOwner), client.ForceOwnership); err != nil {
		return none, "", fmt.Errorf("while applying %s %s: %w", kind, name, err)
	}
	// Apply filled desired with the object as stored.
	stored, err := asObject(desired, live)
	if err != nil {
		return none, "", fmt.Errorf("while reading applied %s %s: %w", kind, name, err)
	}
	return stored, res, nil
}

// asObject converts an apply configuration to a new object of like's type.
func asObject[O client.Object](ac runtime.ApplyConfiguration, like O) (O, error) {
	obj := reflect.New(reflect.TypeOf(like).Elem()).Interface().(O)
	b, err := json.Marshal(ac)
	if err != nil {
		return obj, err
	}
	return obj, json.Unmarshal(b, obj)
}

// upgradeManagedFields moves the fields legacyFieldManager owns on obj by
// Update to fieldOwner's Apply entry, once. Left where they were, they
// would stay co-owned, and a value the operator stops setting (an Ingress
// annotation removed from the spec, the old hash annotations) would never
// be dropped. Fields the legacy entry owned only because the API server
// defaulted them are dropped by the next apply and defaulted again.
func upgradeManagedFields(ctx context.Context, c client.Client, obj client.Object) error {
	// csaupgrade decodes and encodes the apply entry even when there is
	// nothing to hand over: look first.
	if !slices.ContainsFunc(obj.GetManagedFields(), func(f metav1.ManagedFieldsEntry) bool {
		return f.Manager == legacyFieldManager && f.Operation == metav1.ManagedFieldsOperationUpdate && f.Subresource == ""
	}) {
		return nil
	}
	patch, err := csaupgrade.UpgradeManagedFieldsPatch(obj, sets.New(legacyFieldManager), fieldOwner)
	if err != nil || patch == nil {
		return err
	}
	// The patch carries obj's resourceVersion: a stale cache gets a conflict.
	return c.Patch(ctx, obj, client.RawPatch(types.JSONPatchType, patch))
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
