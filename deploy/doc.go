// Package deploy holds no code: it is the deployment files and their
// tests. docker-compose.yml (at the repository root) runs NATS, the relay,
// Prometheus with prometheus/prometheus.yml and the alert rules in
// prometheus/alerts.yml, and Grafana provisioned from grafana/provisioning
// with the dashboard grafana/dashboards/relay.json; nats/nats.conf
// configures NATS; alertmanager/alertmanager.yml mails alerts through the
// relay's SMTP front door. kubernetes/ is the same for Kubernetes (plain
// manifests with a kustomization), systemd/relay.service for a host.
// docs/runbook.md has a section per alert.
//
// The tests here parse those files, as CI has no Docker engine: the
// compose file's services, images and builds, volumes and that every file
// it mounts exists; the dashboard's structure and datasource; the alert
// rules' shape, their runbook links and that no rule names a job; the
// health checks, depends_on conditions, limits and Alertmanager wiring
// of the compose file; the dashboard's datasource variable and __inputs.
// kubernetes_test.go decodes every manifest strictly into its Kubernetes
// API type (k8s.io/api, and the prometheus-operator's monitoring/v1 for
// ServiceMonitor and PrometheusRule; test-only dependencies, chosen over
// hand-written structs so a field the API server would refuse fails here
// too) and checks that the PrometheusRule equals prometheus/alerts.yml.
// .ci/run runs systemd-analyze verify on the unit. promtool checks and unit-tests the rules
// (prometheus/alerts_test.yml). With the build tag integration,
// observability_test.go runs the sandbox, a real Prometheus scraping it
// and headless Chromium on the status page, and alertmanager_test.go has
// a real Alertmanager and swaks send mail through the sandbox's SMTP
// front door (Debian's packages, which .ci/run installs), and
// thirdparty_test.go connects a mailbox with authtool and delivers with
// relay serve through servers this project did not write: Debian's
// postfix and Dovecot checking XOAUTH2, and oidc-provider (npm; its
// configuration and locked versions are in thirdparty/) as the OpenID
// Provider.
package deploy
