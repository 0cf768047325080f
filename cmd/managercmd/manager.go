// Package managercmd holds the commands only ehr-operator has: the manager
// and the chart's test. They link the Kubernetes client and
// controller-runtime, which the receiver's binary (cmd/ehr-receiver) leaves
// out.
package managercmd

import (
	"cmp"
	"crypto/tls"
	goflag "flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
	"github.com/insighthealth/ehr-operator/cmd"
	"github.com/insighthealth/ehr-operator/controllers"
	"github.com/insighthealth/ehr-operator/internal/version"
)

// managerFlags configure `ehr-operator manager`; each falls back to an
// environment variable named after it (--receiver-image → RECEIVER_IMAGE).
type managerFlags struct {
	metricsAddr, probeAddr  string
	metricsSecure           bool
	metricsCertDir          string
	watchNamespaces         []string
	leaderElect             bool
	leaderElectionNamespace string
	receiverImage           string
	receiverLogLevel        string
	maxConcurrentReconciles int
	networkPolicyFile       string
	podDefaultsFile         string
	allowInsecureHTTP       bool
	zap                     zap.Options
}

// Commands are ehr-operator's own subcommands, for cmd.NewRootCommand.
func Commands() []*cobra.Command {
	return []*cobra.Command{newManagerCommand(), newChartTestCommand()}
}

func newManagerCommand() *cobra.Command {
	var f managerFlags
	c := &cobra.Command{
		Use:   "manager",
		Short: "Run the operator: reconcile EHRIntegrations into receivers",
		Long: `Run the controller manager that turns each EHRIntegration into a receiver
Deployment, Service, ServiceAccount, NetworkPolicy, Ingress and
PodDisruptionBudget.

Every flag falls back to an environment variable named after it
(--receiver-image → RECEIVER_IMAGE). The receiver image falls back further
to OPERATOR_IMAGE, so receivers run the operator's own image.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cmd.BindEnv(c.Flags()); err != nil {
				return err
			}
			if f.receiverImage == "" {
				f.receiverImage = os.Getenv("OPERATOR_IMAGE")
			}
			if f.leaderElectionNamespace == "" {
				f.leaderElectionNamespace = os.Getenv("POD_NAMESPACE")
			}
			if f.receiverLogLevel != "" {
				if _, err := cmd.ParseLogLevel(f.receiverLogLevel); err != nil {
					return fmt.Errorf("--receiver-%s", strings.TrimPrefix(err.Error(), "--"))
				}
			}
			return runManager(c, f)
		},
	}
	fs := c.Flags()
	fs.StringVar(&f.metricsAddr, "metrics-bind-address", ":8443", `address of the Prometheus metrics endpoint; "0" turns it off`)
	fs.BoolVar(&f.metricsSecure, "metrics-secure", true, "serve metrics over HTTPS to callers the API server authenticates (TokenReview) and authorizes for GET /metrics (SubjectAccessReview); false serves plain HTTP to anyone, for local development only")
	fs.StringVar(&f.metricsCertDir, "metrics-cert-dir", "", "directory holding tls.crt and tls.key of the metrics endpoint, reloaded when they change; empty means a self-signed certificate made at start")
	fs.StringSliceVar(&f.watchNamespaces, "watch-namespaces", nil, "namespaces whose EHRIntegrations (and Secrets) the manager watches, comma-separated; empty means every namespace")
	fs.StringVar(&f.probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.BoolVar(&f.leaderElect, "leader-elect", false, "elect a leader, so that only one of several replicas reconciles")
	fs.StringVar(&f.leaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader election Lease (default: POD_NAMESPACE, else the pod's own namespace)")
	fs.StringVar(&f.receiverImage, "receiver-image", "", "image of the receivers when an EHRIntegration sets no spec.image (default: OPERATOR_IMAGE)")
	fs.StringVar(&f.receiverLogLevel, "receiver-log-level", "", "--log-level of the receivers when an EHRIntegration sets no spec.logLevel (debug, info, warn, error; empty: the receiver's default, info)")
	fs.IntVar(&f.maxConcurrentReconciles, "max-concurrent-reconciles", 8, "EHRIntegrations reconciled at once")
	fs.StringVar(&f.networkPolicyFile, "receiver-network-policy", "", "YAML file of what each receiver's NetworkPolicy admits "+
		"(the chart writes it from receiverNetworkPolicy); empty means the operator makes no NetworkPolicy")
	fs.BoolVar(&f.allowInsecureHTTP, "allow-insecure-http", false, "let an EHRIntegration's spec.ingress.allowInsecureHTTP or spec.gateway.allowInsecureHTTP serve its receiver over plain HTTP, for tests; "+
		"false: such a receiver gets no Ingress or HTTPRoute, and its status says InsecureHTTPForbidden")
	fs.StringVar(&f.podDefaultsFile, "receiver-pod-defaults", "", "YAML file of the receivers' pod settings, shaped like spec.podTemplate, "+
		"where an EHRIntegration's own say nothing (the chart writes it from receivers.podTemplate); empty means none")
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
	utilruntime.Must(gwv1.Install(scheme))

	// Read before connecting, so that a bad file fails at once.
	var podDefaults *v1alpha1.ReceiverPodTemplate
	if f.podDefaultsFile != "" {
		var err error
		if podDefaults, err = controllers.LoadReceiverPodDefaults(f.podDefaultsFile); err != nil {
			return err
		}
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("while finding the Kubernetes API server: %w", err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Metrics:                       metricsOptions(f),
		Cache:                         cacheOptions(f.watchNamespaces),
		HealthProbeBindAddress:        f.probeAddr,
		LeaderElection:                f.leaderElect,
		LeaderElectionID:              "ehr-operator.insighthealth.io",
		LeaderElectionNamespace:       f.leaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("while creating the manager: %w", err)
	}
	var netpol *controllers.NetworkPolicyConfig
	if f.networkPolicyFile != "" {
		if netpol, err = controllers.LoadNetworkPolicyConfig(f.networkPolicyFile); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(c.Context(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if err := (&controllers.EHRIntegrationReconciler{
		Client:                  mgr.GetClient(),
		APIReader:               mgr.GetAPIReader(),
		Recorder:                mgr.GetEventRecorder("ehr-operator"),
		ReceiverImage:           f.receiverImage,
		ReceiverLogLevel:        f.receiverLogLevel,
		MaxConcurrentReconciles: f.maxConcurrentReconciles,
		NetworkPolicy:           netpol,
		ReceiverPodDefaults:     podDefaults,
		AllowInsecureHTTP:       f.allowInsecureHTTP,
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
	if !f.metricsSecure && f.metricsAddr != "0" {
		log.Info("Metrics are served over plain HTTP to anyone (--metrics-secure=false): for local development only")
	}
	if netpol == nil || !netpol.Enabled {
		log.Info("Receiver NetworkPolicies are off: receivers accept connections from anywhere and may connect anywhere; set --receiver-network-policy")
	}
	log.Info("Starting manager", "version", version.Version, "receiverImage", f.receiverImage,
		"watchNamespaces", cmp.Or(strings.Join(f.watchNamespaces, ","), "(all)"),
		"receiverNetworkPolicy", netpol != nil && netpol.Enabled)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("while running the manager: %w", err)
	}
	return nil
}

// metricsOptions serves metrics as kubebuilder's scaffold does: HTTPS, and
// only to callers the API server says may GET /metrics, so the endpoint
// shows nothing to a pod that merely reaches the port.
func metricsOptions(f managerFlags) metricsserver.Options {
	o := metricsserver.Options{BindAddress: f.metricsAddr, SecureServing: f.metricsSecure}
	if f.metricsSecure {
		o.FilterProvider = filters.WithAuthenticationAndAuthorization
		// HTTP/1.1 only, as kubebuilder's scaffold: HTTP/2's stream resets
		// let one client exhaust the server (CVE-2023-44487).
		o.TLSOpts = []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }}
		// Without a directory controller-runtime makes a self-signed
		// certificate in memory; the scrape then needs insecureSkipVerify.
		if f.metricsCertDir != "" {
			o.CertDir, o.CertName, o.KeyName = f.metricsCertDir, "tls.crt", "tls.key"
		}
	}
	return o
}

// cacheOptions limits the manager's caches (and so its watches and lists)
// to the watched namespaces, so that RoleBindings in those alone suffice.
// Gateways are the exception: a receiver's route attaches to the
// platform's Gateway, usually in a namespace of its own (the chart grants
// reading Gateways cluster-wide, and nothing else). IngressClasses are
// cluster-scoped, which controller-runtime caches cluster-wide in any case
// (the chart grants reading them by a ClusterRole too).
func cacheOptions(namespaces []string) cache.Options {
	var o cache.Options
	for _, ns := range namespaces {
		if ns = strings.TrimSpace(ns); ns != "" {
			if o.DefaultNamespaces == nil {
				o.DefaultNamespaces = map[string]cache.Config{}
			}
			o.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	if o.DefaultNamespaces != nil {
		o.ByObject = map[client.Object]cache.ByObject{
			&gwv1.Gateway{}: {Namespaces: map[string]cache.Config{cache.AllNamespaces: {}}},
		}
	}
	return o
}
