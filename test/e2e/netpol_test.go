//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The receivers' NetworkPolicy, enforced by kube-router on the local
// cluster: probers (hack/image/probe) try TCP connections and report which
// open.
const (
	probeImage = "localhost/ehr-probe:1"
	edgeNS     = "traefik" // the chart's default webhookFrom
	outsideNS  = "ehr-e2e-outsider"
)

// probePod runs the prober in namespace with labels, listening on 8080 (so
// that it is also a target) and on 53 over TCP and UDP (DNS's ports, which
// a non-root process may bind with the pod's sysctl).
func probePod(namespace, name, labels string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: %[1]s}
---
apiVersion: v1
kind: Pod
metadata:
  name: %[2]s
  namespace: %[1]s
  labels: %[4]s
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    seccompProfile: {type: RuntimeDefault}
    sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "0"}]
  containers:
  - name: probe
    image: %[3]s
    imagePullPolicy: Never
    args: ["--listen", ":8080,:53,udp::53"]
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
`, namespace, name, probeImage, labels)
}

// The edge's labels (so only its namespace tells the outsider from the
// edge), and a stand-in for the cluster's DNS, which the local cluster
// does not run: the chart's default DNS peer is any pod labelled
// k8s-app=kube-dns, reached as pods reach DNS, through a Service.
const (
	edgeLabels = "{app.kubernetes.io/name: traefik}"
	dnsNS      = "kube-system"
	dnsLabels  = "{k8s-app: kube-dns, ehr-e2e: dns}"
	dnsService = `apiVersion: v1
kind: Service
metadata: {name: ehr-e2e-dns, namespace: kube-system}
spec:
  selector: {k8s-app: kube-dns, ehr-e2e: dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
`
)

// probeFrom runs the prober in pod against addrs and returns addr → "open"
// or "closed: <error>".
func probeFrom(ctx context.Context, namespace, pod string, addrs ...string) (map[string]string, error) {
	args := append([]string{"-n", namespace, "exec", pod, "--", "/probe", "--timeout=2s"}, addrs...)
	out, err := env.Kubectl(ctx, "", args...)
	if err != nil {
		return nil, err
	}
	return parseProbe(out), nil
}

func parseProbe(out string) map[string]string {
	res := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if addr, verdict, ok := strings.Cut(strings.TrimSpace(l), " "); ok {
			res[addr] = verdict
		}
	}
	return res
}

// expectProbe compares got with want (addr → open or not) and describes
// every difference.
func expectProbe(from string, got map[string]string, want map[string]bool) error {
	var bad []string
	for addr, open := range want {
		v, ok := got[addr]
		switch {
		case !ok:
			bad = append(bad, addr+": no answer from the prober")
		case open && v != "open":
			bad = append(bad, addr+": want open, got "+v)
		case !open && v == "open":
			bad = append(bad, addr+": want closed, got open")
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("from %s: %s", from, strings.Join(bad, "; "))
	}
	return nil
}

func (s *story) networkPolicy(t *testing.T) {
	ctx := context.Background()
	np := get(t, ns, "networkpolicy", receiver, "{.spec.policyTypes}")
	t.Logf("NetworkPolicy %s/%s, policyTypes %s", ns, receiver, np)
	if owner := get(t, ns, "networkpolicy", receiver, "{.metadata.ownerReferences[0].name}"); owner != name {
		t.Errorf("NetworkPolicy owned by %q, want EHRIntegration %s", owner, name)
	}

	tar := filepath.Join(t.TempDir(), "probe.tar")
	if out, err := exec.Command(filepath.Join(env.Root, "hack/image/build.sh"), "probe", tar).CombinedOutput(); err != nil {
		t.Fatalf("while building the prober image: %v\n%s", err, out)
	}
	if err := env.LoadImages(ctx, tar); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = env.Kubectl(context.Background(), "", "delete", "namespace", outsideNS, "--ignore-not-found", "--wait=false")
		_, _ = env.Kubectl(context.Background(), "", "-n", edgeNS, "delete", "pod", "e2e-edge", "--ignore-not-found", "--wait=false")
		_, _ = env.Kubectl(context.Background(), "", "-n", dnsNS, "delete", "pod/e2e-dns", "service/ehr-e2e-dns", "--ignore-not-found", "--wait=false")
	})
	kubectl(t, probePod(edgeNS, "e2e-edge", edgeLabels)+"---\n"+probePod(outsideNS, "e2e-outsider", edgeLabels)+
		"---\n"+probePod(dnsNS, "e2e-dns", dnsLabels)+"---\n"+dnsService, "apply", "-f", "-")
	for _, p := range [][2]string{{edgeNS, "e2e-edge"}, {outsideNS, "e2e-outsider"}, {dnsNS, "e2e-dns"}} {
		kubectl(t, "", "-n", p[0], "wait", "pod/"+p[1], "--for=condition=Ready", "--timeout=60s")
	}

	pods := readyPods(t, ns, selectorOf(t, ns, receiver))
	if len(pods) == 0 {
		t.Fatal("no Ready receiver pod")
	}
	rpod := pods[0]
	podIP := get(t, ns, "pod", rpod, "{.status.podIP}")
	svcIP := get(t, ns, "service", receiver, "{.spec.clusterIP}")
	web, metrics := podIP+":8080", podIP+":9090"
	svcWeb := svcIP + ":8080"

	// kube-router programs a new pod's address into the policy's sets
	// within a second or two of its start.
	wait(t, "the edge to reach the receivers and the outsider not", 30*time.Second, func(ctx context.Context) error {
		got, err := probeFrom(ctx, edgeNS, "e2e-edge", web, svcWeb)
		if err != nil {
			return err
		}
		if err := expectProbe("the edge ("+edgeNS+")", got, map[string]bool{web: true, svcWeb: true}); err != nil {
			return err
		}
		got, err = probeFrom(ctx, outsideNS, "e2e-outsider", web, svcWeb, metrics)
		if err != nil {
			return err
		}
		t.Logf("from %s/e2e-outsider (the edge's labels, another namespace): %v", outsideNS, got)
		return expectProbe("the outsider ("+outsideNS+")", got, map[string]bool{web: false, svcWeb: false, metrics: false})
	})
	t.Logf("from %s/e2e-edge: %s and %s open", edgeNS, web, svcWeb)

	// Egress: a debug container shares the receiver pod's network, so it
	// may connect only where the receiver may. Every target listens, as
	// the outsider (no policy of its own) shows first: the API server on
	// the node, the API's ClusterIP, the edge pod (on DNS's ports too) and
	// the manager's health port; then the database, and DNS on its ports
	// (pod and Service, UDP and TCP), but not on another.
	edgeIP := get(t, edgeNS, "pod", "e2e-edge", "{.status.podIP}")
	dnsIP := get(t, dnsNS, "pod", "e2e-dns", "{.status.podIP}")
	dnsSvcIP := get(t, dnsNS, "service", "ehr-e2e-dns", "{.spec.clusterIP}")
	mgr := readyPods(t, operatorNS, "app.kubernetes.io/name=ehr-operator")
	if len(mgr) == 0 {
		t.Fatal("no Ready manager pod")
	}
	mgrIP := get(t, operatorNS, "pod", mgr[0], "{.status.podIP}")
	db := fmt.Sprintf("%s:%d", pg.Host, pg.Port)
	want := map[string]bool{db: true, env.NodeIP + ":6443": false, "10.233.0.1:443": false,
		edgeIP + ":8080": false, mgrIP + ":8081": false,
		dnsIP + ":53": true, "udp:" + dnsIP + ":53": true, dnsSvcIP + ":53": true, "udp:" + dnsSvcIP + ":53": true,
		dnsIP + ":8080": false, edgeIP + ":53": false, "udp:" + edgeIP + ":53": false}
	targets := make([]string, 0, len(want))
	for a := range want {
		targets = append(targets, a)
	}
	control, err := probeFrom(ctx, outsideNS, "e2e-outsider", targets...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("from %s/e2e-outsider: %v", outsideNS, control)
	all := map[string]bool{}
	for a := range want {
		all[a] = true
	}
	if err := expectProbe("the outsider", control, all); err != nil {
		t.Fatalf("a target does not listen, so its refusal below would prove nothing: %v", err)
	}
	container := "probe-" + strconv.FormatInt(time.Now().Unix(), 36)
	kubectl(t, "", append([]string{"-n", ns, "debug", "pod/" + rpod, "--image=" + probeImage, "--image-pull-policy=Never",
		"--profile=restricted", "--container=" + container, "--", "/probe", "--timeout=3s"}, targets...)...)
	wait(t, "the debug container to finish", 60*time.Second, func(ctx context.Context) error {
		out, err := env.Kubectl(ctx, "", "-n", ns, "get", "pod", rpod, "-o",
			fmt.Sprintf(`jsonpath={.status.ephemeralContainerStatuses[?(@.name==%q)].state.terminated.reason}`, container))
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) == "" {
			return fmt.Errorf("debug container %s has not terminated", container)
		}
		return nil
	})
	out := kubectl(t, "", "-n", ns, "logs", rpod, "-c", container)
	t.Logf("from a debug container in receiver pod %s:\n%s", rpod, strings.TrimSpace(out))
	if err := expectProbe("the receiver pod "+rpod, parseProbe(out), want); err != nil {
		t.Error(err)
	}
	// The receivers still reach their database and the kubelet's probes:
	// the integration stays Ready.
	waitIntegrationReady(t, 2)
}
