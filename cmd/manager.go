package cmd

import (
	goflag "flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
	"github.com/insighthealth/ehr-operator/controllers"
	"github.com/insighthealth/ehr-operator/internal/version"
)

// managerFlags configure `ehr-operator manager`; each falls back to an
// environment variable named after it (--receiver-image → RECEIVER_IMAGE).
type managerFlags struct {
	metricsAddr, probeAddr  string
	leaderElect             bool
	leaderElectionNamespace string
	receiverImage           string
	maxConcurrentReconciles int
	zap                     zap.Options
}

func newManagerCommand() *cobra.Command {
	var f managerFlags
	c := &cobra.Command{
		Use:   "manager",
		Short: "Run the operator: reconcile EHRIntegrations into receivers",
		Long: `Run the controller manager that turns each EHRIntegration into a receiver
Deployment, Service, ServiceAccount, Ingress and PodDisruptionBudget.

Every flag falls back to an environment variable named after it
(--receiver-image → RECEIVER_IMAGE). The receiver image falls back further
to OPERATOR_IMAGE, so receivers run the operator's own image.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := bindEnv(c.Flags()); err != nil {
				return err
			}
			if f.receiverImage == "" {
				f.receiverImage = os.Getenv("OPERATOR_IMAGE")
			}
			if f.leaderElectionNamespace == "" {
				f.leaderElectionNamespace = os.Getenv("POD_NAMESPACE")
			}
			return runManager(c, f)
		},
	}
	fs := c.Flags()
	fs.StringVar(&f.metricsAddr, "metrics-bind-address", ":8080", `address of the Prometheus metrics endpoint (plain HTTP); "0" turns it off`)
	fs.StringVar(&f.probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.BoolVar(&f.leaderElect, "leader-elect", false, "elect a leader, so that only one of several replicas reconciles")
	fs.StringVar(&f.leaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader election Lease (default: POD_NAMESPACE, else the pod's own namespace)")
	fs.StringVar(&f.receiverImage, "receiver-image", "", "image of the receivers when an EHRIntegration sets no spec.image (default: OPERATOR_IMAGE)")
	fs.IntVar(&f.maxConcurrentReconciles, "max-concurrent-reconciles", 2, "EHRIntegrations reconciled at once")
	gofs := goflag.NewFlagSet("manager", goflag.ContinueOnError)
	f.zap.BindFlags(gofs)
	if kc := goflag.CommandLine.Lookup("kubeconfig"); kc != nil {
		gofs.Var(kc.Value, kc.Name, kc.Usage)
	}
	fs.AddGoFlagSet(gofs)
	return c
}

func runManager(c *cobra.Command, f managerFlags) error {
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&f.zap)))
	log := ctrl.Log.WithName("setup")

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(v1alpha1.AddToScheme(scheme))
	// Registering the types needs no Gateway API on the cluster; the
	// reconciler watches it only once it is served.
	utilruntime.Must(gwv1.AddToScheme(scheme))

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("while finding the Kubernetes API server: %w", err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Metrics:                       metricsserver.Options{BindAddress: f.metricsAddr},
		HealthProbeBindAddress:        f.probeAddr,
		LeaderElection:                f.leaderElect,
		LeaderElectionID:              "ehr-operator.insighthealth.io",
		LeaderElectionNamespace:       f.leaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("while creating the manager: %w", err)
	}
	ctx, stop := signal.NotifyContext(c.Context(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if err := (&controllers.EHRIntegrationReconciler{
		Client:                  mgr.GetClient(),
		APIReader:               mgr.GetAPIReader(),
		Recorder:                mgr.GetEventRecorder("ehr-operator"),
		ReceiverImage:           f.receiverImage,
		MaxConcurrentReconciles: f.maxConcurrentReconciles,
	}).SetupWithManager(ctx, mgr); err != nil {
		return fmt.Errorf("while setting up the EHRIntegration controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("while adding the health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return fmt.Errorf("while adding the readiness check: %w", err)
	}

	if f.receiverImage == "" {
		log.Info("No receiver image: EHRIntegrations without spec.image will be Degraded (NoReceiverImage); set --receiver-image or RECEIVER_IMAGE")
	}
	log.Info("Starting manager", "version", version.Version, "receiverImage", f.receiverImage)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("while running the manager: %w", err)
	}
	return nil
}
