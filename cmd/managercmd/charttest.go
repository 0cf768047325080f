package managercmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
	"github.com/insighthealth/ehr-operator/cmd"
)

// newChartTestCommand is what the chart's `helm test` hook runs, in a pod
// of the operator's own image (nothing else can be assumed to be pullable).
func newChartTestCommand() *cobra.Command {
	var namespace, deployment string
	var timeout time.Duration
	c := &cobra.Command{
		Use:    "chart-test",
		Short:  "Check an installed release: the manager is serving and the CRD validates (run by `helm test`)",
		Args:   cobra.NoArgs,
		Hidden: true,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cmd.BindEnv(c.Flags()); err != nil {
				return err
			}
			cfg, err := ctrl.GetConfig()
			if err != nil {
				return fmt.Errorf("while finding the Kubernetes API server: %w", err)
			}
			scheme := runtime.NewScheme()
			if err := clientgoscheme.AddToScheme(scheme); err != nil {
				return err
			}
			if err := v1alpha1.AddToScheme(scheme); err != nil {
				return err
			}
			cl, err := client.New(cfg, client.Options{Scheme: scheme})
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(c.Context(), timeout)
			defer cancel()
			return chartTest(ctx, cl, c.OutOrStdout(), namespace, deployment)
		},
	}
	fs := c.Flags()
	fs.StringVar(&namespace, "namespace", "", "the release's namespace (required)")
	fs.StringVar(&deployment, "deployment", "", "the manager's Deployment (required)")
	fs.DurationVar(&timeout, "timeout", 2*time.Minute, "how long the manager may take to become available")
	return c
}

// chartTest checks that the manager's Deployment has its pods available on
// its current template, and that the API server accepts a valid
// EHRIntegration and refuses an invalid one (server-side dry run: nothing
// is stored).
func chartTest(ctx context.Context, cl client.Client, out io.Writer, namespace, deployment string) error {
	if namespace == "" || deployment == "" {
		return errors.New("--namespace and --deployment are required")
	}
	for {
		var d appsv1.Deployment
		err := cl.Get(ctx, client.ObjectKey{Namespace: namespace, Name: deployment}, &d)
		if err == nil && d.Status.ObservedGeneration == d.Generation && d.Status.AvailableReplicas >= 1 &&
			d.Status.UpdatedReplicas == d.Status.Replicas {
			fmt.Fprintf(out, "ok: manager %s/%s has %d available pod(s) on its current template\n", namespace, deployment, d.Status.AvailableReplicas)
			break
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("%d of %d replicas available, %d updated", d.Status.AvailableReplicas, d.Status.Replicas, d.Status.UpdatedReplicas)
			}
			return fmt.Errorf("the manager %s/%s is not serving: %w", namespace, deployment, err)
		case <-time.After(2 * time.Second):
		}
	}
	valid := &v1alpha1.EHRIntegration{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, GenerateName: "chart-test-"},
		Spec: v1alpha1.EHRIntegrationSpec{
			EHR:                  "chart-test",
			CredentialsSecretRef: v1alpha1.SecretReference{Name: "chart-test"},
			Database:             v1alpha1.DatabaseSpec{SecretRef: v1alpha1.SecretKeyReference{Name: "chart-test"}},
		},
	}
	if err := cl.Create(ctx, valid.DeepCopy(), client.DryRunAll); err != nil {
		return fmt.Errorf("the API server refused a valid EHRIntegration (dry run): %w", err)
	}
	fmt.Fprintln(out, "ok: a valid EHRIntegration is accepted (dry run)")
	invalid := valid.DeepCopy()
	invalid.Spec.EHR = "Not A DNS Label"
	err := cl.Create(ctx, invalid, client.DryRunAll)
	if !apierrors.IsInvalid(err) {
		return fmt.Errorf("an EHRIntegration with an invalid ehr was not refused as invalid (dry run): %v", err)
	}
	fmt.Fprintln(out, "ok: an invalid EHRIntegration is refused (dry run)")
	return nil
}
