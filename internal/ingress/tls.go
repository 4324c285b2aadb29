package ingress

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"relay365/internal/pki"
	"relay365/internal/queue"
)

// LoadTLS reads the listener's certificate chain and key (PEM files).
func LoadTLS(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--smtp-tls-cert/--smtp-tls-key: %w", err)
	}
	return serverTLS(cert), nil
}

// serverTLS is the listeners' TLS: 1.2 or newer (RFC 8996 retired 1.0
// and 1.1; Office 365 refuses them too).
func serverTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

// LoopbackTLS is the certificate of a listener that only local clients
// reach when the operator gave none: a CA of the relay's own, made once in
// dir and kept (dir/ca.pem is what a local client trusts), and a server
// certificate for 127.0.0.1, ::1 and localhost. It never serves another
// address: a listener that others reach needs a certificate they trust.
func LoopbackTLS(dir string) (cfg *tls.Config, caFile string, err error) {
	caFile = filepath.Join(dir, "ca.pem")
	certFile, keyFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if cfg, err := LoadTLS(certFile, keyFile); err == nil {
		if _, err := os.Stat(caFile); err == nil {
			return cfg, caFile, nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", err
	}
	ca, err := pki.NewCA("Relay365 local SMTP submission CA")
	if err != nil {
		return nil, "", err
	}
	cert, err := ca.Server()
	if err != nil {
		return nil, "", err
	}
	if _, _, err := pki.WriteFiles(dir, "server", cert); err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		return nil, "", err
	}
	return serverTLS(cert), caFile, nil
}

// Validate says what is wrong with the listener settings; certGiven says
// whether the operator named a certificate.
func (c Config) Validate(certGiven bool) error {
	var errs []error
	for _, l := range []struct{ flag, addr string }{{"--smtp-listen", c.Listen}, {"--smtps-listen", c.ListenTLS}} {
		if l.addr == "" {
			continue
		}
		if err := queue.CheckListen(l.addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %v", l.flag, l.addr, err))
			continue
		}
		if !certGiven && !queue.IsLoopback(l.addr) {
			errs = append(errs, fmt.Errorf("%s %s reaches other hosts: give it a certificate with --smtp-tls-cert and --smtp-tls-key (passwords and mail never cross a network in clear text)", l.flag, l.addr))
		}
	}
	if _, port, _ := net.SplitHostPort(c.Listen); c.Listen != "" && c.Listen == c.ListenTLS && port != "0" {
		errs = append(errs, fmt.Errorf("--smtp-listen and --smtps-listen are both %s", c.Listen))
	}
	return errors.Join(errs...)
}
