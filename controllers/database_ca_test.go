package controllers

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// spec.database.ca becomes a read-only volume of exactly the CA's key,
// mounted where the receiver's --database-ca-file points, from a ConfigMap
// or a Secret; and the API server refuses both or neither.
func TestDatabaseCAIsMounted(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	const pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	create(t, credsSecret(ns), dbSecret(ns),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db-ca"}, Data: map[string]string{"root.pem": pem}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db-tls"}, Data: map[string][]byte{"ca.crt": []byte(pem)}})
	for _, tc := range []struct {
		name string
		ca   v1alpha1.DatabaseCA
		want func(corev1.VolumeSource) (string, string)
	}{
		{"configmap", v1alpha1.DatabaseCA{ConfigMapKeyRef: &v1alpha1.CAKeyReference{Name: "db-ca", Key: "root.pem"}},
			func(v corev1.VolumeSource) (string, string) {
				if v.ConfigMap == nil || len(v.ConfigMap.Items) != 1 {
					return "", ""
				}
				return v.ConfigMap.Name, v.ConfigMap.Items[0].Key + ">" + v.ConfigMap.Items[0].Path
			}},
		{"secret", v1alpha1.DatabaseCA{SecretKeyRef: &v1alpha1.CAKeyReference{Name: "db-tls"}},
			func(v corev1.VolumeSource) (string, string) {
				if v.Secret == nil || len(v.Secret.Items) != 1 {
					return "", ""
				}
				return v.Secret.SecretName, v.Secret.Items[0].Key + ">" + v.Secret.Items[0].Path
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := integration(ns, "ca-"+tc.name, "ca-"+tc.name)
			e.Spec.Database.CA = &tc.ca
			create(t, e)
			var d appsv1.Deployment
			child(t, ns, e.Name, &d)
			pod := d.Spec.Template.Spec
			var vol *corev1.Volume
			for i := range pod.Volumes {
				if pod.Volumes[i].Name == "database-ca" {
					vol = &pod.Volumes[i]
				}
			}
			if vol == nil {
				t.Fatalf("no database-ca volume among %v", pod.Volumes)
			}
			wantName, wantItem := "db-ca", "root.pem>ca.crt"
			if tc.name == "secret" {
				// The key defaults to ca.crt.
				wantName, wantItem = "db-tls", "ca.crt>ca.crt"
			}
			if name, item := tc.want(vol.VolumeSource); name != wantName || item != wantItem {
				t.Errorf("database-ca volume %+v: source %q item %q, want %q %q", vol.VolumeSource, name, item, wantName, wantItem)
			}
			c := pod.Containers[0]
			mounted := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
				return m.Name == "database-ca" && m.MountPath == databaseCADir && m.ReadOnly && m.SubPath == ""
			})
			if !mounted {
				t.Errorf("database-ca is not mounted read-only at %s: %+v", databaseCADir, c.VolumeMounts)
			}
			if !slices.Contains(c.Args, "--database-ca-file="+databaseCADir+"/"+databaseCAFile) {
				t.Errorf("receiver args %q lack --database-ca-file", c.Args)
			}
		})
	}

	t.Run("without a CA, no volume and no flag", func(t *testing.T) {
		e := integration(ns, "ca-none", "ca-none")
		create(t, e)
		var d appsv1.Deployment
		child(t, ns, e.Name, &d)
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name == "database-ca" {
				t.Error("a database-ca volume without spec.database.ca")
			}
		}
		if args := strings.Join(d.Spec.Template.Spec.Containers[0].Args, " "); strings.Contains(args, "--database-ca-file") {
			t.Errorf("--database-ca-file without spec.database.ca: %s", args)
		}
	})

	// A CA that is not there, or lacks its key, is named in the status
	// (its pods would never start: FailedMount); once made, it is found.
	t.Run("missing", func(t *testing.T) {
		for _, tc := range []struct {
			name, reason, message string
			ca                    v1alpha1.DatabaseCA
		}{
			{"cm-absent", v1alpha1.ReasonConfigMapNotFound, "ConfigMap no-ca (database.ca.configMapKeyRef) not found",
				v1alpha1.DatabaseCA{ConfigMapKeyRef: &v1alpha1.CAKeyReference{Name: "no-ca"}}},
			{"cm-key", v1alpha1.ReasonConfigMapKeyMissing, "ConfigMap db-ca (database.ca.configMapKeyRef) has no value for key ca.crt",
				v1alpha1.DatabaseCA{ConfigMapKeyRef: &v1alpha1.CAKeyReference{Name: "db-ca"}}},
			{"secret-absent", v1alpha1.ReasonSecretNotFound, "Secret no-tls (database.ca.secretKeyRef) not found",
				v1alpha1.DatabaseCA{SecretKeyRef: &v1alpha1.CAKeyReference{Name: "no-tls"}}},
		} {
			e := integration(ns, "ca-"+tc.name, "ca-"+tc.name)
			e.Spec.Database.CA = &tc.ca
			create(t, e)
			got := waitCondition(t, ns, e.Name, metav1.ConditionFalse, tc.reason)
			if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionReady); c.Message != tc.message {
				t.Errorf("%s: message %q, want %q", tc.name, c.Message, tc.message)
			}
			if err := suite.client.Get(ctx, key(ns, e.Name+"-receiver"), &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
				t.Errorf("%s: a Deployment whose pods could not mount their CA: err = %v", tc.name, err)
			}
		}
		create(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "no-ca"}, Data: map[string]string{"ca.crt": pem}})
		waitCondition(t, ns, "ca-cm-absent", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
	})

	t.Run("both or neither refused", func(t *testing.T) {
		ref := &v1alpha1.CAKeyReference{Name: "x"}
		for name, ca := range map[string]v1alpha1.DatabaseCA{
			"both":    {SecretKeyRef: ref, ConfigMapKeyRef: ref},
			"neither": {},
		} {
			e := integration(ns, "ca-bad-"+name, "ca-bad-"+name)
			e.Spec.Database.CA = &ca
			err := suite.client.Create(ctx, e)
			if err == nil || !strings.Contains(err.Error(), "exactly one of secretKeyRef and configMapKeyRef") {
				t.Errorf("%s: %v, want the API server to refuse it", name, err)
			}
		}
	})
}
