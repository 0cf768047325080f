package chart

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/insighthealth/ehr-operator/controllers"
)

const netpolFlag = "--receiver-network-policy=/etc/ehr-operator/receiver-network-policy/policy.yaml"

// receiverNetworkPolicy renders the chart with args and reads the receivers'
// network policy the way the manager does, from the file its flag names.
func receiverNetworkPolicy(t *testing.T, args ...string) (*controllers.NetworkPolicyConfig, *unstructured.Unstructured) {
	t.Helper()
	objs := helmTemplate(t, "ehr-operator", "ops", args...)
	cm := find(t, objs, "ConfigMap", "ehr-operator-receiver-network-policy")
	text, _, _ := unstructured.NestedString(cm.Object, "data", "policy.yaml")
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := controllers.LoadNetworkPolicyConfig(path)
	if err != nil {
		t.Fatalf("the manager refuses the chart's policy file: %v\n%s", err, text)
	}
	return c, find(t, objs, "Deployment", "ehr-operator")
}

// The chart hands the manager a policy file it accepts, mounted where the
// flag says, with the operator's own pods among the metrics peers.
func TestReceiverNetworkPolicyFile(t *testing.T) {
	c, d := receiverNetworkPolicy(t)
	if !c.Enabled {
		t.Error("receiver NetworkPolicies are off by default")
	}
	mc := managerContainer(t, d)
	if !slices.Contains(stringsOf(mc["args"]), netpolFlag) {
		t.Errorf("manager args %q lack %s", stringsOf(mc["args"]), netpolFlag)
	}
	checkConfigMapMount(t, d, "receiver-network-policy", "/etc/ehr-operator/receiver-network-policy", "ehr-operator-receiver-network-policy")
	if len(c.WebhookFrom) != 1 || c.WebhookFrom[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "traefik" ||
		c.WebhookFrom[0].PodSelector.MatchLabels["app.kubernetes.io/name"] != "traefik" {
		t.Errorf("webhookFrom = %+v, want Traefik's pods in namespace traefik", c.WebhookFrom)
	}
	if len(c.MetricsFrom) != 2 {
		t.Fatalf("metricsFrom = %+v, want monitoring and the operator", c.MetricsFrom)
	}
	op := c.MetricsFrom[1]
	if op.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "ops" {
		t.Errorf("operator peer namespace %v, want the release namespace ops", op.NamespaceSelector)
	}
	if sel := op.PodSelector.MatchLabels; !reflect.DeepEqual(sel, podLabels(t, d, sel)) {
		t.Errorf("operator peer %v does not select the manager pods", sel)
	}
	if len(c.Database.Ports) != 1 || c.Database.Ports[0].Port.IntValue() != 5432 || len(c.Database.To) != 0 {
		t.Errorf("database = %+v, want port 5432 to any address", c.Database)
	}

	// Turned off, the file still goes to the manager, so it deletes the
	// policies it made.
	off, d := receiverNetworkPolicy(t, "--set", "receiverNetworkPolicy.enabled=false")
	if off.Enabled || !slices.Contains(stringsOf(managerContainer(t, d)["args"]), netpolFlag) {
		t.Errorf("enabled=false: config %+v, args %q", off, stringsOf(managerContainer(t, d)["args"]))
	}
	// Empty metricsFrom admits any source: no operator peer narrows it.
	anyone, _ := receiverNetworkPolicy(t, "--set-json", "receiverNetworkPolicy.metricsFrom=[]")
	if len(anyone.MetricsFrom) != 0 {
		t.Errorf("metricsFrom=[] rendered %+v, want empty (any source)", anyone.MetricsFrom)
	}
	// A change of the policy rolls the manager, which reads it at start.
	checksum := func(d *unstructured.Unstructured) string {
		a, _, _ := unstructured.NestedStringMap(d.Object, "spec", "template", "metadata", "annotations")
		return a["checksum/receiver-network-policy"]
	}
	if _, d2 := receiverNetworkPolicy(t, "--set", "receiverNetworkPolicy.database.to[0].ipBlock.cidr=10.0.0.5/32"); checksum(d2) == "" || checksum(d2) == checksum(d) {
		t.Errorf("pod template checksum %q did not change with the policy (was %q)", checksum(d2), checksum(d))
	}
}

// The schema refuses an egress target without ports (such a rule would
// admit every port), an unknown protocol, a misspelt peer field, selectors
// that are not LabelSelectors, a peer the API refuses (empty, or an ipBlock
// beside a selector) and a CIDR without its prefix.
func TestReceiverNetworkPolicySchema(t *testing.T) {
	for _, set := range []string{
		`receiverNetworkPolicy.database.ports=[]`,
		`receiverNetworkPolicy.database.ports=[{"port":5432,"protocol":"ICMP"}]`,
		`receiverNetworkPolicy.dns={"to":[],"ports":[]}`,
		`receiverNetworkPolicy.webhookFrom=[{"podSelektor":{}}]`,
		`receiverNetworkPolicy.webhookFrom=[{}]`,
		`receiverNetworkPolicy.webhookFrom=[{"podSelector":{"matchLabel":{"app":"nginx"}}}]`,
		`receiverNetworkPolicy.webhookFrom=[{"podSelector":{"matchLabels":{"app":{"name":"nginx"}}}}]`,
		`receiverNetworkPolicy.webhookFrom=[{"podSelector":{"matchLabels":{"app":null}}}]`,
		`receiverNetworkPolicy.metricsFrom=[{"namespaceSelector":{"matchExpressions":[{"key":"team","operator":"Equals","values":["a"]}]}}]`,
		`receiverNetworkPolicy.metricsFrom=[{"namespaceSelector":{"matchExpressions":[{"key":"team","operator":"In"}]}}]`,
		`receiverNetworkPolicy.metricsFrom=[{"namespaceSelector":{"matchExpressions":[{"key":"team","operator":"Exists","values":["a"]}]}}]`,
		`receiverNetworkPolicy.metricsFrom=[{"namespaceSelector":{"matchExpressions":[{"operator":"Exists"}]}}]`,
		`receiverNetworkPolicy.metricsFrom=[{"namespaceSelector":{"matchExpressions":[{"key":"team","operator":"Exists","value":"a"}]}}]`,
		`receiverNetworkPolicy.database.to=[{"ipBlock":{"cidr":"10.0.0.5"}}]`,
		`receiverNetworkPolicy.database.to=[{"ipBlock":{"cidr":"10.0.0.0/33"}}]`,
		`receiverNetworkPolicy.database.to=[{"ipBlock":{"cidr":"10.0.0.256/32"}}]`,
		`receiverNetworkPolicy.database.to=[{"ipBlock":{"cidr":"db.example.com/32"}}]`,
		`receiverNetworkPolicy.database.to=[{"ipBlock":{"cidr":"fd00::1"}}]`,
		`receiverNetworkPolicy.database.to=[{"ipBlock":{"cidr":"fd00::/129"}}]`,
		`receiverNetworkPolicy.database.to=[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.1.0.0"]}}]`,
		`receiverNetworkPolicy.database.to=[{"ipBlock":{"cidr":"10.0.0.0/8"},"namespaceSelector":{}}]`,
	} {
		if _, err := run(helmBin(t), "template", "x", chartDir, "--set-json", set); err == nil {
			t.Errorf("helm accepted --set-json %s", set)
		} else if !strings.Contains(err.Error(), "receiverNetworkPolicy") {
			t.Errorf("--set-json %s refused for another reason: %v", set, err)
		}
	}
	// Valid peers pass, IPv6 among them, and label values given as
	// numbers reach the manager as the strings its strict decoding wants.
	c, _ := receiverNetworkPolicy(t, "--set-json",
		`receiverNetworkPolicy.database.to=[{"ipBlock":{"cidr":"fd00::/8","except":["fd00::5/128"]}},{"ipBlock":{"cidr":"0.0.0.0/0"}},`+
			`{"namespaceSelector":{"matchLabels":{"generation":2}},"podSelector":{"matchExpressions":[{"key":"tier","operator":"In","values":[1,"db"]},{"key":"canary","operator":"DoesNotExist"}]}}]`)
	if to := c.Database.To; len(to) != 3 || to[0].IPBlock == nil || to[0].IPBlock.CIDR != "fd00::/8" ||
		to[2].NamespaceSelector.MatchLabels["generation"] != "2" || !slices.Equal(to[2].PodSelector.MatchExpressions[0].Values, []string{"1", "db"}) {
		t.Errorf("database.to = %+v", to)
	}
}
