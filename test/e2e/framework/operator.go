package framework

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"
)

// Release is the Helm release name the tests and `make dev` use.
const Release = "ehr-operator"

// SplitImage splits "repo:tag" at the last colon (a registry port has no
// tag after it).
func SplitImage(image string) (repo, tag string) {
	i := strings.LastIndex(image, ":")
	if i < 0 || strings.Contains(image[i:], "/") {
		return image, "latest"
	}
	return image[:i], image[i+1:]
}

// InstallOperator installs or upgrades the chart from the working tree as
// release Release in namespace ns, running image (already loaded; never
// pulled), and waits for the manager to be Ready. set holds extra
// `--set key=value` pairs.
func (e *Env) InstallOperator(ctx context.Context, ns, image string, set ...string) (string, error) {
	repo, tag := SplitImage(image)
	args := []string{"upgrade", "--install", Release, filepath.Join(e.Root, "charts/ehr-operator"),
		"--namespace", ns, "--create-namespace", "--wait", "--timeout", "3m",
		"--set", "image.repository=" + repo, "--set", "image.tag=" + tag, "--set", "image.pullPolicy=Never"}
	for _, s := range append(append([]string(nil), e.ChartSets...), set...) {
		args = append(args, "--set", s)
	}
	start := time.Now()
	out, err := e.HelmCmd(ctx, args...)
	if err != nil {
		return out, fmt.Errorf("while installing the chart: %w", err)
	}
	return fmt.Sprintf("%s(helm took %s)", out, time.Since(start).Round(time.Second)), nil
}

// Dump writes what a person debugging a failure looks at first: events,
// the YAML of the EHRIntegrations and their children, and the logs of every
// pod (and of its previous container, if it restarted) in namespaces.
func (e *Env) Dump(ctx context.Context, w io.Writer, namespaces ...string) {
	section := func(title, out string, err error) {
		fmt.Fprintf(w, "\n===== %s =====\n%s", title, out)
		if err != nil {
			fmt.Fprintf(w, "(error: %v)\n", err)
		}
	}
	out, err := e.Kubectl(ctx, "", "get", "nodes,pods", "-A", "-o", "wide")
	section("nodes and pods", out, err)
	out, err = e.Kubectl(ctx, "", "get", "events", "-A", "--sort-by=.lastTimestamp")
	section("events", out, err)
	for _, ns := range namespaces {
		out, err = e.Kubectl(ctx, "", "-n", ns, "get",
			"ehrintegrations,deployments,replicasets,services,endpointslices,poddisruptionbudgets,leases,pods,"+
				"ingresses,gateways.gateway.networking.k8s.io,httproutes.gateway.networking.k8s.io", "-o", "yaml")
		section("resources in "+ns, out, err)
		names, err := e.Kubectl(ctx, "", "-n", ns, "get", "pods", "-o", "jsonpath={.items[*].metadata.name}")
		if err != nil {
			section("pods in "+ns, "", err)
			continue
		}
		for _, pod := range strings.Fields(names) {
			out, err = e.Kubectl(ctx, "", "-n", ns, "logs", pod, "--all-containers", "--tail=300", "--timestamps")
			section("logs of "+ns+"/"+pod, out, err)
			if prev, err := e.Kubectl(ctx, "", "-n", ns, "logs", pod, "--all-containers", "--previous", "--tail=100"); err == nil && prev != "" {
				section("logs of the previous container of "+ns+"/"+pod, prev, nil)
			}
		}
	}
}

// Onboarding is what a platform team applies to onboard one EHR: a
// namespace (Pod Security "restricted", which the receivers must meet), the
// database Secret, the credentials Secret and the EHRIntegration, and, when
// Edge is set, what exposes it at the local edge.
type Onboarding struct {
	Namespace, Name, DatabaseURL, APIKey, WebhookSecret, TimeZone string
	Replicas                                                      int
	Edge                                                          *Exposure
	// Extra are more documents for the namespace (e.g. a pull secret).
	Extra string
	// PullSecret, when set, is the receivers' spec.podTemplate.imagePullSecrets.
	PullSecret string
}

// Exposure puts a receiver at Host on the edge: by an Ingress of class
// traefik whose TLS Secret (<name>-tls, in the tenant's namespace) holds
// Cert, or, with Listener set, by an HTTPRoute on that listener of the edge
// Gateway, which holds the certificate itself.
type Exposure struct {
	Host     string
	Cert     Cert   // Ingress only
	Listener string // HTTPRoute: the edge Gateway's listener (sectionName)
	// GatewayNamespace is the edge Gateway's namespace (Env.EdgeNamespace).
	GatewayNamespace string
}

// YAML renders o as one multi-document manifest for `kubectl apply -f -`.
func (o Onboarding) YAML() string {
	var tlsSecret, expose, extra, podTemplate string
	if o.Extra != "" {
		extra = "---\n" + o.Extra
	}
	if o.PullSecret != "" {
		podTemplate = fmt.Sprintf("  podTemplate:\n    imagePullSecrets: [{name: %s}]\n", o.PullSecret)
	}
	switch x := o.Edge; {
	case x == nil:
	case x.Listener != "":
		expose = fmt.Sprintf(`  gateway:
    parentRefs:
    - {name: %s, namespace: %s, sectionName: %s}
    hostnames: [%s]
`, EdgeGateway, x.GatewayNamespace, x.Listener, x.Host)
	default:
		tlsSecret = "---\n" + TLSSecretYAML(o.Namespace, o.Name+"-tls", x.Cert)
		expose = fmt.Sprintf(`  ingress:
    host: %s
    className: %s
    tlsSecretName: %s-tls
`, x.Host, EdgeClass, o.Name)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
  labels:
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: v1
kind: Secret
metadata: {name: appointments-db, namespace: %[1]s}
type: Opaque
stringData:
  uri: %[3]q
---
apiVersion: v1
kind: Secret
metadata: {name: %[2]s-webhook, namespace: %[1]s}
type: Opaque
stringData:
  api-key: %[4]q
  webhook-secret: %[5]q
%[8]s%[10]s---
apiVersion: ehr.insighthealth.io/v1alpha1
kind: EHRIntegration
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  ehr: %[2]s
  credentialsSecretRef: {name: %[2]s-webhook}
  database:
    secretRef: {name: appointments-db, key: uri}
  timeZone: %[6]s
  replicas: %[7]d
%[9]s%[11]s`, o.Namespace, o.Name, o.DatabaseURL, o.APIKey, o.WebhookSecret, o.TimeZone, o.Replicas, tlsSecret, expose, extra, podTemplate)
}

// ReceiverURL is the webhook URL of EHRIntegration name at its receiver
// Service's ClusterIP, which the host reaches through kube-proxy's rules.
func (e *Env) ReceiverURL(ctx context.Context, ns, name string) (string, error) {
	out, err := e.Kubectl(ctx, "", "-n", ns, "get", "service", name+"-receiver", "-o",
		`jsonpath={.spec.clusterIP} {.spec.ports[?(@.name=="http")].port}`)
	if err != nil {
		return "", err
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		return "", fmt.Errorf("service %s/%s-receiver has no ClusterIP or no port named http (%q)", ns, name, out)
	}
	return fmt.Sprintf("http://%s:%s/v2/webhooks/%s/sync-appointments", f[0], f[1], name), nil
}
