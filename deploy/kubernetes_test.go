package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"relay365/internal/relay"
	"relay365/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite deploy/kubernetes/prometheusrule.yaml from deploy/prometheus/alerts.yml")

// kinds are the API types the manifests may hold, by apiVersion/kind.
var kinds = map[string]func() any{
	"v1/Namespace":                            func() any { return new(corev1.Namespace) },
	"v1/Service":                              func() any { return new(corev1.Service) },
	"apps/v1/StatefulSet":                     func() any { return new(appsv1.StatefulSet) },
	"apps/v1/Deployment":                      func() any { return new(appsv1.Deployment) },
	"batch/v1/Job":                            func() any { return new(batchv1.Job) },
	"policy/v1/PodDisruptionBudget":           func() any { return new(policyv1.PodDisruptionBudget) },
	"networking.k8s.io/v1/NetworkPolicy":      func() any { return new(networkingv1.NetworkPolicy) },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return new(monitoringv1.ServiceMonitor) },
	"monitoring.coreos.com/v1/PrometheusRule": func() any { return new(monitoringv1.PrometheusRule) },
}

// strictDecode decodes one YAML document into v, refusing fields v's
// type does not have (a typo in a manifest fails here).
func strictDecode(doc []byte, v any) error {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// manifests decodes every document of every resource in
// deploy/kubernetes/kustomization.yaml into its API type.
func manifests(t *testing.T) map[string]any {
	t.Helper()
	var k struct {
		Resources          []string `json:"resources"`
		ConfigMapGenerator []struct {
			Name  string   `json:"name"`
			Files []string `json:"files"`
		} `json:"configMapGenerator"`
	}
	b, err := os.ReadFile(path("deploy/kubernetes/kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		// The kustomization has more fields than this struct: decode it
		// leniently here; kustomize itself is not run in CI.
		if err := yaml.Unmarshal(b, &k); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := os.ReadDir(path("deploy/kubernetes"))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".yaml") && e.Name() != "kustomization.yaml" && !slices.Contains(k.Resources, e.Name()) {
			t.Errorf("deploy/kubernetes/%s is not in the kustomization's resources", e.Name())
		}
	}
	for _, g := range k.ConfigMapGenerator {
		for _, f := range g.Files {
			_, file, ok := strings.Cut(f, "=")
			if !ok {
				file = f
			}
			if _, err := os.Stat(path("deploy/kubernetes/" + file)); err != nil || strings.Contains(file, "..") {
				t.Errorf("configMapGenerator %s: file %s: %v", g.Name, file, err)
			}
		}
	}
	objs := map[string]any{}
	for _, r := range k.Resources {
		b, err := os.ReadFile(path("deploy/kubernetes/" + r))
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range strings.Split(string(b), "\n---\n") {
			var meta struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatalf("%s document %d: %v", r, i, err)
			}
			newObj, ok := kinds[meta.APIVersion+"/"+meta.Kind]
			if !ok {
				t.Errorf("%s document %d: unexpected %s/%s", r, i, meta.APIVersion, meta.Kind)
				continue
			}
			obj := newObj()
			if err := strictDecode([]byte(doc), obj); err != nil {
				t.Errorf("%s document %d (%s %s): %v", r, i, meta.Kind, meta.Metadata.Name, err)
				continue
			}
			objs[meta.Kind+"/"+meta.Metadata.Name] = obj
		}
	}
	return objs
}

// podTemplates are the pod templates of the workloads in objs
// (Deployments, the StatefulSet, the Job), by the objs key of each.
func podTemplates(objs map[string]any) map[string]corev1.PodTemplateSpec {
	pods := map[string]corev1.PodTemplateSpec{}
	for key, o := range objs {
		switch w := o.(type) {
		case *appsv1.Deployment:
			pods[key] = w.Spec.Template
		case *appsv1.StatefulSet:
			pods[key] = w.Spec.Template
		case *batchv1.Job:
			pods[key] = w.Spec.Template
		}
	}
	return pods
}

// TestKubernetesManifests: every manifest decodes strictly into its
// Kubernetes API type, and they hold what operators need: a 3-node NATS
// JetStream StatefulSet loading the per-role users (the copy of
// auth.conf equal to deploy/nats/auth.conf), the relays with 2+
// replicas, streams of 3 replicas, probes on /healthz and /readyz,
// disruption budgets, network policies for NATS's client port and
// /metrics, the key from a Secret, a ServiceMonitor.
func TestKubernetesManifests(t *testing.T) {
	objs := manifests(t)
	get := func(key string) any {
		t.Helper()
		o, ok := objs[key]
		if !ok {
			t.Fatalf("no %s in deploy/kubernetes", key)
		}
		return o
	}
	a, _ := os.ReadFile(path("deploy/nats/auth.conf"))
	b, _ := os.ReadFile(path("deploy/kubernetes/nats-auth.conf"))
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Error("deploy/kubernetes/nats-auth.conf differs from deploy/nats/auth.conf: cp deploy/nats/auth.conf deploy/kubernetes/nats-auth.conf")
	}
	conf, _ := os.ReadFile(path("deploy/kubernetes/nats.conf"))
	for _, want := range []string{"sync_interval: always", "include ./auth.conf", "nats-2.nats-cluster:6222"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("deploy/kubernetes/nats.conf has no %s", want)
		}
	}
	nats := get("StatefulSet/nats").(*appsv1.StatefulSet)
	if nats.Spec.Replicas == nil || *nats.Spec.Replicas != 3 || len(nats.Spec.VolumeClaimTemplates) != 1 {
		t.Errorf("nats: want 3 replicas with a volume claim each")
	}
	var c compose
	readYAML(t, "docker-compose.yml", &c)
	if img := nats.Spec.Template.Spec.Containers[0].Image; img != c.Services["nats"].Image {
		t.Errorf("nats image %s, compose runs %s", img, c.Services["nats"].Image)
	}

	for _, name := range []string{"relay-tokens", "relay-worker"} {
		d := get("Deployment/" + name).(*appsv1.Deployment)
		if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
			t.Errorf("%s: want 2 or more replicas", name)
		}
		ctr := d.Spec.Template.Spec.Containers[0]
		env := map[string]string{}
		for _, e := range ctr.Env {
			env[e.Name] = e.Value
		}
		if env["RELAY_REPLICAS"] != "3" || env["RELAY_HTTP_ADDR"] != ":9465" {
			t.Errorf("%s: RELAY_REPLICAS %q, RELAY_HTTP_ADDR %q; want 3 and :9465", name, env["RELAY_REPLICAS"], env["RELAY_HTTP_ADDR"])
		}
		if p := ctr.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
			t.Errorf("%s: liveness probe %+v, want /healthz", name, p)
		}
		if p := ctr.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
			t.Errorf("%s: readiness probe %+v, want /readyz", name, p)
		}
		if sc := d.Spec.Template.Spec.SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
			t.Errorf("%s: want runAsUser 65532", name)
		}
		pdb := get("PodDisruptionBudget/" + name).(*policyv1.PodDisruptionBudget)
		if !reflect.DeepEqual(pdb.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels) {
			t.Errorf("PodDisruptionBudget %s selects %v, the Deployment %v", name, pdb.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels)
		}
		hasKey := false
		for _, v := range d.Spec.Template.Spec.Volumes {
			hasKey = hasKey || (v.Secret != nil && v.Secret.SecretName == "relay-token-key")
		}
		if hasKey != (name == "relay-tokens") {
			t.Errorf("%s has the key Secret: %v; only the token service should", name, hasKey)
		}
	}
	if get("Job/relay-setup").(*batchv1.Job).Spec.Template.Spec.Containers[0].Args[2] != "3" {
		t.Error("relay-setup does not make streams with 3 replicas")
	}

	np := get("NetworkPolicy/nats").(*networkingv1.NetworkPolicy)
	clientFrom := ""
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			if p.Port.IntValue() == 4222 {
				clientFrom = r.From[0].PodSelector.String()
			}
		}
	}
	if !strings.Contains(clientFrom, "relay365/nats-client") {
		t.Errorf("NATS's client port is open to %q, want only pods labelled relay365/nats-client", clientFrom)
	}
	rp := get("NetworkPolicy/relay").(*networkingv1.NetworkPolicy)
	for _, r := range rp.Spec.Ingress {
		for _, p := range r.Ports {
			if p.Port.IntValue() == 9465 && (len(r.From) != 1 || r.From[0].PodSelector == nil || r.From[0].PodSelector.MatchLabels["app.kubernetes.io/name"] != "prometheus") {
				t.Errorf("/metrics is open to %+v, want only Prometheus", r.From)
			}
		}
	}
	sm := get("ServiceMonitor/relay").(*monitoringv1.ServiceMonitor)
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "http" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v", sm.Spec.Endpoints)
	}
}

// TestKubernetesPrometheusRule: the PrometheusRule is
// deploy/prometheus/alerts.yml, rule for rule; -update rewrites it.
func TestKubernetesPrometheusRule(t *testing.T) {
	alerts, err := os.ReadFile(path("deploy/prometheus/alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var spec monitoringv1.PrometheusRuleSpec
	if err := strictDecode(alerts, &spec); err != nil {
		t.Fatalf("alerts.yml as a PrometheusRule spec: %v", err)
	}
	if *update {
		want := monitoringv1.PrometheusRule{Spec: spec}
		want.APIVersion, want.Kind = "monitoring.coreos.com/v1", "PrometheusRule"
		want.Name, want.Labels = "relay", map[string]string{"release": "prometheus"}
		out, err := yaml.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		head := "# Generated from deploy/prometheus/alerts.yml by\n# go test ./deploy -run TestKubernetesPrometheusRule -args -update; do not edit.\n"
		out = bytes.Replace(out, []byte("  creationTimestamp: null\n"), nil, 1)
		if err := os.WriteFile(path("deploy/kubernetes/prometheusrule.yaml"), append([]byte(head), out...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pr, ok := manifests(t)["PrometheusRule/relay"].(*monitoringv1.PrometheusRule)
	if !ok {
		t.Fatal("no PrometheusRule relay in deploy/kubernetes")
	}
	if !reflect.DeepEqual(pr.Spec, spec) {
		t.Error("deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: go test ./deploy -run TestKubernetesPrometheusRule -args -update")
	}
}

// stopBudget is the longest a relay serve with an external NATS server
// may take to stop after SIGTERM with the default --shutdown-grace: the
// grace in-flight sends get, then the HTTP server's 5 s shutdown, the 2 s
// NATS flush, and the front door and token service closing. A container
// runtime that kills it sooner cuts sends short after Office 365 took
// them, before their acks reach NATS (the mail is sent again).
const stopBudget = relay.DefaultShutdownGrace + 15*time.Second

// TestRelayStopsWithinTheGracePeriod: Kubernetes (terminationGracePeriodSeconds,
// 30 s unless set) and Docker Compose (stop_grace_period, 10 s unless
// set) let a relay finish its in-flight sends before they SIGKILL it.
func TestRelayStopsWithinTheGracePeriod(t *testing.T) {
	objs := manifests(t)
	for _, name := range []string{"relay-tokens", "relay-worker"} {
		d, ok := objs["Deployment/"+name].(*appsv1.Deployment)
		if !ok {
			t.Fatalf("no Deployment %s", name)
		}
		for _, e := range d.Spec.Template.Spec.Containers[0].Env {
			if e.Name == "RELAY_SHUTDOWN_GRACE" {
				t.Fatalf("%s sets RELAY_SHUTDOWN_GRACE; this test assumes the default", name)
			}
		}
		got := 30 * time.Second // Kubernetes' default
		if p := d.Spec.Template.Spec.TerminationGracePeriodSeconds; p != nil {
			got = time.Duration(*p) * time.Second
		}
		if got < stopBudget {
			t.Errorf("%s: terminationGracePeriodSeconds %s, want at least %s (--shutdown-grace %s and the rest of the stop)", name, got, stopBudget, relay.DefaultShutdownGrace)
		}
	}
	var c struct {
		Services map[string]struct {
			StopGracePeriod string `yaml:"stop_grace_period"`
			Command         any    `yaml:"command"`
		} `yaml:"services"`
	}
	readYAML(t, "docker-compose.yml", &c)
	for _, name := range []string{"relay-tokens", "relay-worker", "sandbox"} {
		s, ok := c.Services[name]
		if !ok {
			t.Fatalf("no compose service %s", name)
		}
		got := 10 * time.Second // Docker's default
		if s.StopGracePeriod != "" {
			d, err := time.ParseDuration(s.StopGracePeriod)
			if err != nil {
				t.Fatalf("%s: stop_grace_period %q: %v", name, s.StopGracePeriod, err)
			}
			got = d
		}
		if got < stopBudget {
			t.Errorf("compose %s: stop_grace_period %s, want at least %s (--shutdown-grace %s and the rest of the stop)", name, got, stopBudget, relay.DefaultShutdownGrace)
		}
	}
}

// TestNATSProbesSpareANodeWithoutQuorum runs a nats-server of the
// version the manifests pin (go.mod's) as the StatefulSet runs it: in a
// 3-node JetStream cluster, here with its two peers down (a node lost,
// a zone outage, a full restart where it comes up first). Such a node has
// no JetStream meta leader, and nats-server's plain /healthz answers 503
// until it has one; the process is fine and is what the cluster needs to
// recover. The liveness probe must not restart it for that (Kubernetes
// would kill it every 30 s, so it never rejoins); the plain /healthz
// belongs in a startup probe, as NATS's own Helm chart does.
func TestNATSProbesSpareANodeWithoutQuorum(t *testing.T) {
	nats := manifests(t)["StatefulSet/nats"].(*appsv1.StatefulSet)
	ctr := nats.Spec.Template.Spec.Containers[0]
	if ctr.LivenessProbe == nil || ctr.LivenessProbe.HTTPGet == nil || ctr.ReadinessProbe == nil || ctr.ReadinessProbe.HTTPGet == nil {
		t.Fatal("nats: want HTTP liveness and readiness probes")
	}
	if p := ctr.StartupProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
		t.Errorf("nats: startup probe %+v, want the full /healthz (JetStream current) before liveness takes over", p)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := server.NewServer(&server.Options{
		ServerName: "nats-0", Host: "127.0.0.1", Port: -1, HTTPHost: "127.0.0.1", HTTPPort: -1,
		JetStream: true, StoreDir: t.TempDir(),
		Cluster: server.ClusterOpts{Name: "relay365", Host: "127.0.0.1", Port: -1},
		// Its two peers, down: nothing listens on these ports.
		Routes: server.RoutesFromStr(fmt.Sprintf("nats://127.0.0.1:%d,nats://127.0.0.1:%d", testutil.FreePort(t), testutil.FreePort(t))),
		NoLog:  true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(20 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	monitor := "http://" + s.MonitorAddr().String()
	probe := func(path string) (int, string) { return testutil.Get(ctx, monitor+path) }
	// The condition is real: the full check fails on this node.
	testutil.Eventually(t, ctx, "/healthz 503 on a node without a meta leader", func() bool {
		code, _ := probe("/healthz")
		return code == http.StatusServiceUnavailable
	})
	if code, body := probe(ctr.LivenessProbe.HTTPGet.Path); code != http.StatusOK {
		t.Errorf("nats liveness probe %s on a live node without quorum: %d %s; Kubernetes would restart it", ctr.LivenessProbe.HTTPGet.Path, code, body)
	}
}

// peer is one end of a connection as a NetworkPolicy sees it: a pod (its
// labels and namespace) or, with ip set, an address outside the cluster.
type peer struct {
	labels map[string]string
	ns     string
	ip     string
}

// in says whether one of peers (a rule's from or to) selects p, by the
// API's rules: a peer with only a podSelector selects pods of the
// policy's own namespace (policyNS); with a namespaceSelector too, pods of
// the namespaces it selects (every namespace carries
// kubernetes.io/metadata.name); an ipBlock, addresses outside the
// cluster. No peers selects everything.
func (p peer) in(t *testing.T, peers []networkingv1.NetworkPolicyPeer, policyNS string) bool {
	t.Helper()
	if len(peers) == 0 {
		return true
	}
	match := func(sel *metav1.LabelSelector, l map[string]string) bool {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			t.Fatal(err)
		}
		return s.Matches(labels.Set(l))
	}
	for _, f := range peers {
		if f.IPBlock != nil {
			if p.ip == "" {
				continue
			}
			_, cidr, err := net.ParseCIDR(f.IPBlock.CIDR)
			if err != nil {
				t.Fatal(err)
			}
			ok := cidr.Contains(net.ParseIP(p.ip))
			for _, e := range f.IPBlock.Except {
				if _, ex, err := net.ParseCIDR(e); err == nil && ex.Contains(net.ParseIP(p.ip)) {
					ok = false
				}
			}
			if ok {
				return true
			}
			continue
		}
		if p.ip != "" {
			continue
		}
		nsOK := p.ns == policyNS
		if f.NamespaceSelector != nil {
			nsOK = match(f.NamespaceSelector, map[string]string{"kubernetes.io/metadata.name": p.ns})
		}
		if nsOK && (f.PodSelector == nil || match(f.PodSelector, p.labels)) {
			return true
		}
	}
	return false
}

// portIn says whether ports (a rule's) admit port over proto; none admits
// every port, and a port without a protocol is TCP.
func portIn(ports []networkingv1.NetworkPolicyPort, port int, proto corev1.Protocol) bool {
	for _, p := range ports {
		pp := corev1.ProtocolTCP
		if p.Protocol != nil {
			pp = *p.Protocol
		}
		if p.Port.IntValue() == port && pp == proto {
			return true
		}
	}
	return len(ports) == 0
}

// allows says whether the NetworkPolicy np (in namespace policyNS) lets
// a pod with labels pod in namespace ns connect to port (TCP).
func allows(t *testing.T, np *networkingv1.NetworkPolicy, policyNS string, pod map[string]string, ns string, port int) bool {
	t.Helper()
	for _, r := range np.Spec.Ingress {
		if portIn(r.Ports, port, corev1.ProtocolTCP) && (peer{labels: pod, ns: ns}).in(t, r.From, policyNS) {
			return true
		}
	}
	return false
}

// egressPolicies are the policies of objs that restrict where a pod with
// labels pod may connect to.
func egressPolicies(t *testing.T, objs map[string]any, pod map[string]string) []*networkingv1.NetworkPolicy {
	t.Helper()
	var out []*networkingv1.NetworkPolicy
	for _, o := range objs {
		np, ok := o.(*networkingv1.NetworkPolicy)
		if !ok || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			t.Fatal(err)
		}
		if sel.Matches(labels.Set(pod)) {
			out = append(out, np)
		}
	}
	return out
}

// TestNetworkPolicyLimitsEgress: each pod of the manifests may connect
// only where its work is (networkpolicy.yaml's Egress policies), so a
// compromised worker cannot reach the token endpoint or NATS's cluster
// port, the token service cannot send mail, and NATS reaches nothing
// outside. Every pod the manifests make is selected by an Egress policy
// (one left out could connect anywhere), and each attempt below is
// allowed or refused as the policies are written.
func TestNetworkPolicyLimitsEgress(t *testing.T) {
	objs := manifests(t)
	const home = "relay365"
	for name, pod := range podTemplates(objs) {
		if len(egressPolicies(t, objs, pod.Labels)) == 0 {
			t.Errorf("%s: no Egress NetworkPolicy selects its pods: they may connect anywhere", name)
		}
	}
	app := func(name string) map[string]string { return map[string]string{"app.kubernetes.io/name": name} }
	dns := peer{labels: map[string]string{"k8s-app": "kube-dns"}, ns: "kube-system"}
	nats := peer{labels: app("nats"), ns: home}
	internet := peer{ip: "52.96.0.1"} // an address of Microsoft's, outside the cluster
	for _, c := range []struct {
		from  string
		to    peer
		port  int
		proto corev1.Protocol
		want  bool
	}{
		{"nats", dns, 53, corev1.ProtocolUDP, true},
		{"nats", nats, 6222, corev1.ProtocolTCP, true},
		{"nats", internet, 443, corev1.ProtocolTCP, false},
		{"nats", peer{labels: app("relay-worker"), ns: home}, 2525, corev1.ProtocolTCP, false},
		{"relay-setup", nats, 4222, corev1.ProtocolTCP, true},
		{"relay-setup", internet, 443, corev1.ProtocolTCP, false},
		{"relay-tokens", dns, 53, corev1.ProtocolTCP, true},
		{"relay-tokens", nats, 4222, corev1.ProtocolTCP, true},
		{"relay-tokens", internet, 443, corev1.ProtocolTCP, true},
		{"relay-tokens", internet, 587, corev1.ProtocolTCP, false},
		{"relay-tokens", nats, 6222, corev1.ProtocolTCP, false},
		{"relay-worker", dns, 53, corev1.ProtocolUDP, true},
		{"relay-worker", nats, 4222, corev1.ProtocolTCP, true},
		{"relay-worker", internet, 587, corev1.ProtocolTCP, true},
		{"relay-worker", internet, 443, corev1.ProtocolTCP, false},
		{"relay-worker", internet, 25, corev1.ProtocolTCP, false},
		{"relay-worker", nats, 6222, corev1.ProtocolTCP, false},
		{"relay-worker", peer{labels: app("relay-tokens"), ns: home}, 9465, corev1.ProtocolTCP, false},
	} {
		got := false
		for _, np := range egressPolicies(t, objs, app(c.from)) {
			for _, r := range np.Spec.Egress {
				got = got || portIn(r.Ports, c.port, c.proto) && c.to.in(t, r.To, home)
			}
		}
		if got != c.want {
			t.Errorf("%s to %+v port %d/%s: allowed %v, want %v", c.from, c.to, c.port, c.proto, got, c.want)
		}
	}
}

// TestNetworkPolicyLetsProducersIn: the README tells producers in the
// cluster to reach NATS at nats.relay365:4222 with their pods labelled
// relay365/nats-client: "true". Producers run in their own namespaces
// (Alertmanager in monitoring, an application in its own), so the label
// must open the client port from any namespace, and nothing else may.
func TestNetworkPolicyLetsProducersIn(t *testing.T) {
	objs := manifests(t)
	nats := objs["NetworkPolicy/nats"].(*networkingv1.NetworkPolicy)
	relayNP := objs["NetworkPolicy/relay"].(*networkingv1.NetworkPolicy)
	const home = "relay365" // the kustomization's namespace
	client := map[string]string{"relay365/nats-client": "true", "app": "producer"}
	for _, c := range []struct {
		what string
		np   *networkingv1.NetworkPolicy
		pod  map[string]string
		ns   string
		port int
		want bool
	}{
		{"a relay to NATS", nats, map[string]string{"app.kubernetes.io/name": "relay-worker", "relay365/nats-client": "true"}, home, 4222, true},
		{"a labelled producer in its own namespace to NATS", nats, client, "payments", 4222, true},
		{"a labelled producer in monitoring to NATS", nats, client, "monitoring", 4222, true},
		{"an unlabelled pod to NATS", nats, map[string]string{"app": "other"}, "payments", 4222, false},
		{"an unlabelled pod of relay365 to NATS", nats, map[string]string{"app": "other"}, home, 4222, false},
		{"a labelled producer to NATS's cluster port", nats, client, "payments", 6222, false},
		{"a NATS peer to the cluster port", nats, map[string]string{"app.kubernetes.io/name": "nats"}, home, 6222, true},
		{"Prometheus to /metrics", relayNP, map[string]string{"app.kubernetes.io/name": "prometheus"}, "monitoring", 9465, true},
		{"a producer to /metrics", relayNP, client, "payments", 9465, false},
		{"a producer to the SMTP front door", relayNP, map[string]string{"app": "printer"}, "payments", 2525, true},
	} {
		if got := allows(t, c.np, home, c.pod, c.ns, c.port); got != c.want {
			t.Errorf("%s (namespace %s, port %d): allowed %v, want %v", c.what, c.ns, c.port, got, c.want)
		}
	}
}

// restrictedViolations lists how a pod spec breaks the Kubernetes Pod
// Security Standard "restricted" (the namespace enforces it), and, with
// readOnlyRoot (the manifests' long-running pods), a writable root
// filesystem.
func restrictedViolations(spec corev1.PodSpec, readOnlyRoot bool) []string {
	var v []string
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		v = append(v, "host namespaces")
	}
	for _, vol := range spec.Volumes {
		s := vol.VolumeSource
		if s.ConfigMap == nil && s.Secret == nil && s.EmptyDir == nil && s.PersistentVolumeClaim == nil &&
			s.Projected == nil && s.DownwardAPI == nil && s.CSI == nil && s.Ephemeral == nil {
			v = append(v, "volume "+vol.Name+" of a type restricted forbids")
		}
	}
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		sc := c.SecurityContext
		if sc == nil {
			sc = &corev1.SecurityContext{}
		}
		nonRoot := sc.RunAsNonRoot
		if nonRoot == nil {
			nonRoot = psc.RunAsNonRoot
		}
		if nonRoot == nil || !*nonRoot {
			v = append(v, c.Name+": runAsNonRoot not true")
		}
		if uid := sc.RunAsUser; (uid != nil && *uid == 0) || (uid == nil && psc.RunAsUser != nil && *psc.RunAsUser == 0) {
			v = append(v, c.Name+": runs as uid 0")
		}
		sp := sc.SeccompProfile
		if sp == nil {
			sp = psc.SeccompProfile
		}
		if sp == nil || (sp.Type != corev1.SeccompProfileTypeRuntimeDefault && sp.Type != corev1.SeccompProfileTypeLocalhost) {
			v = append(v, c.Name+": no seccompProfile RuntimeDefault or Localhost")
		}
		if sc.Privileged != nil && *sc.Privileged {
			v = append(v, c.Name+": privileged")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			v = append(v, c.Name+": allowPrivilegeEscalation not false")
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			v = append(v, c.Name+": capabilities not dropped (ALL)")
		} else {
			for _, a := range sc.Capabilities.Add {
				if a != "NET_BIND_SERVICE" {
					v = append(v, c.Name+": adds capability "+string(a))
				}
			}
		}
		if readOnlyRoot && (sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem) {
			v = append(v, c.Name+": root filesystem writable")
		}
	}
	return v
}

// TestPodsMeetRestrictedPodSecurity: the namespace enforces the Pod
// Security Standard "restricted", and every pod the manifests make (NATS,
// the relays, the setup Job) and the authtool pod of the README's
// Kubernetes step 5 meet it, so none is refused at admission, on a
// cluster that enforces it by default as much as in this namespace.
func TestPodsMeetRestrictedPodSecurity(t *testing.T) {
	objs := manifests(t)
	ns := objs["Namespace/relay365"].(*corev1.Namespace)
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
		t.Errorf("namespace relay365: pod-security.kubernetes.io/enforce %q, want restricted", got)
	}
	pods := map[string]corev1.PodSpec{}
	for key, tmpl := range podTemplates(objs) {
		pods[key] = tmpl.Spec
	}
	readme, err := os.ReadFile(path("README.md"))
	if err != nil {
		t.Fatal(err)
	}
	overrides := regexp.MustCompile(`--overrides='([^']*)'`).FindAllStringSubmatch(string(readme), -1)
	if len(overrides) == 0 {
		t.Error("README: no kubectl run --overrides found")
	}
	for i, m := range overrides {
		var p corev1.Pod
		dec := json.NewDecoder(strings.NewReader(m[1]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			t.Errorf("README kubectl run %d: --overrides is not a Pod: %v", i, err)
			continue
		}
		pods[fmt.Sprintf("README kubectl run %d", i)] = p.Spec
	}
	for key, spec := range pods {
		for _, v := range restrictedViolations(spec, !strings.HasPrefix(key, "README")) {
			t.Errorf("%s: %s", key, v)
		}
	}
}

// TestEveryContainerHasResources: a namespace with a ResourceQuota on
// cpu and memory refuses a pod whose containers do not all request both,
// and a container without a memory limit can take a node's memory. The
// setup Job had none, so `kubectl apply -k` into such a namespace made
// every pod but the one that creates the streams.
func TestEveryContainerHasResources(t *testing.T) {
	for key, tmpl := range podTemplates(manifests(t)) {
		spec := tmpl.Spec
		for _, c := range append(spec.InitContainers, spec.Containers...) {
			r := c.Resources
			if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() || r.Limits.Memory().IsZero() {
				t.Errorf("%s container %s: resources %v, want cpu and memory requests and a memory limit", key, c.Name, r)
			}
		}
	}
}

// evictable says whether the eviction API lets a pod go under pdb, for a
// workload of replicas pods of which ready are ready, by the rules of
// policy/v1: a ready pod only within the budget; a pod that runs but is
// not ready, under the default IfHealthyBudget, only while the
// application is not disrupted (currentHealthy >= desiredHealthy), under
// AlwaysAllow, always.
func evictable(pdb *policyv1.PodDisruptionBudget, replicas, ready int, podReady bool) bool {
	desired := replicas
	if mu := pdb.Spec.MaxUnavailable; mu != nil {
		desired = replicas - mu.IntValue()
	} else if mn := pdb.Spec.MinAvailable; mn != nil {
		desired = mn.IntValue()
	}
	if !podReady {
		if p := pdb.Spec.UnhealthyPodEvictionPolicy; p != nil && *p == policyv1.AlwaysAllow {
			return true
		}
		return ready >= desired
	}
	return ready-1 >= desired
}

// TestRelayPodsCanBeDrainedWhileNotReady: a relay is not ready until an
// account has a usable token (before the first authtool login, or while
// the only account needs consent). Its PodDisruptionBudget must not then
// block kubectl drain (a node upgrade would hang on pods that serve
// nothing anyway), while ready relays keep one replica up. NATS keeps the
// default: an unready NATS node may be catching up, and evicting it could
// cost the quorum.
func TestRelayPodsCanBeDrainedWhileNotReady(t *testing.T) {
	objs := manifests(t)
	for _, name := range []string{"relay-tokens", "relay-worker"} {
		d := objs["Deployment/"+name].(*appsv1.Deployment)
		pdb := objs["PodDisruptionBudget/"+name].(*policyv1.PodDisruptionBudget)
		n := int(*d.Spec.Replicas)
		if !evictable(pdb, n, 0, false) {
			t.Errorf("%s: with all %d pods not ready (no usable token yet), the PodDisruptionBudget blocks evicting them: drains hang", name, n)
		}
		if !evictable(pdb, n, n, true) || evictable(pdb, n, n-1, true) {
			t.Errorf("%s: ready pods: want one eviction at a time allowed, not more", name)
		}
	}
	nats := objs["PodDisruptionBudget/nats"].(*policyv1.PodDisruptionBudget)
	if p := nats.Spec.UnhealthyPodEvictionPolicy; p != nil && *p == policyv1.AlwaysAllow {
		t.Error("nats: unready NATS nodes may be catching up; keep IfHealthyBudget")
	}
}

// natsK8sOptions parses deploy/kubernetes/nats.conf as nats-server does
// in the StatefulSet's pods: with auth.conf beside it (the ConfigMap's
// name for nats-auth.conf) and the pod's environment.
func natsK8sOptions(t *testing.T) *server.Options {
	t.Helper()
	dir := t.TempDir()
	for from, to := range map[string]string{"deploy/kubernetes/nats.conf": "nats.conf", "deploy/kubernetes/nats-auth.conf": "auth.conf"} {
		b, err := os.ReadFile(path(from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, to), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("POD_NAME", "nats-0")
	for _, r := range []string{"PRODUCER", "WORKER", "TOKENS", "ADMIN"} {
		t.Setenv("RELAY_"+r+"_PASSWORD", "pw-"+r)
	}
	opts, err := server.ProcessConfigFile(filepath.Join(dir, "nats.conf"))
	if err != nil {
		t.Fatalf("deploy/kubernetes/nats.conf: %v", err)
	}
	return opts
}

// TestNATSStopsInLameDuckMode: a NATS pod's stop is a lame-duck stop, so
// its stream and consumer leaderships move to the other servers before
// it goes, and its clients move a few at a time; a plain SIGTERM stops
// the server at once and leaves the streams it led without a leader until
// an election. The preStop hook signals the pid file nats.conf names, in
// a directory the read-only container can write (an emptyDir), and the
// lame duck and JetStream's stop fit in the grace period. (The integration
// test TestNATSPreStopSignalsLameDuck runs the hook against a nats-server.)
func TestNATSStopsInLameDuckMode(t *testing.T) {
	opts := natsK8sOptions(t)
	nats := manifests(t)["StatefulSet/nats"].(*appsv1.StatefulSet)
	spec := nats.Spec.Template.Spec
	ctr := spec.Containers[0]
	if opts.PidFile == "" {
		t.Fatal("nats.conf: no pid_file: the preStop hook cannot find the server")
	}
	want := []string{"nats-server", "-sl=ldm=" + opts.PidFile}
	if l := ctr.Lifecycle; l == nil || l.PreStop == nil || l.PreStop.Exec == nil || !slices.Equal(l.PreStop.Exec.Command, want) {
		t.Errorf("nats: preStop %+v, want exec %q", ctr.Lifecycle, want)
	}
	writable := false
	for _, m := range ctr.VolumeMounts {
		if m.MountPath == filepath.Dir(opts.PidFile) && !m.ReadOnly {
			for _, v := range spec.Volumes {
				writable = writable || v.Name == m.Name && v.EmptyDir != nil
			}
		}
	}
	if !writable {
		t.Errorf("nats: %s is not on a writable emptyDir (the root filesystem is read-only): the server cannot write its pid file", filepath.Dir(opts.PidFile))
	}
	if opts.LameDuckDuration <= 0 || opts.LameDuckGracePeriod >= opts.LameDuckDuration {
		t.Errorf("nats.conf: lame_duck_duration %s, lame_duck_grace_period %s", opts.LameDuckDuration, opts.LameDuckGracePeriod)
	}
	// JetStream's stop: about 10.5 ms a consumer (BENCHMARKS.md, "Where
	// the stop goes"), 21 s at 2,000 accounts; a second for the leaderships.
	const jsStop = 2000*10500*time.Microsecond + time.Second
	grace := 30 * time.Second
	if p := spec.TerminationGracePeriodSeconds; p != nil {
		grace = time.Duration(*p) * time.Second
	}
	if need := opts.LameDuckDuration + jsStop; grace < need {
		t.Errorf("nats: terminationGracePeriodSeconds %s, want at least %s (lame duck %s and JetStream's stop at 2,000 accounts)", grace, need, opts.LameDuckDuration)
	}
}
