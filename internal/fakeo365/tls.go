package fakeo365

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"relay365/internal/pki"
)

// tlsCredentials is the throw-away PKI of one fake: a CA and the SMTP
// server certificate it signed.
type tlsCredentials struct {
	cert  tls.Certificate
	caPEM []byte
	pool  *x509.CertPool
}

// newTLSCredentials creates a CA and a leaf certificate for 127.0.0.1,
// ::1, localhost and hostname (internal/pki).
func newTLSCredentials(hostname string) (*tlsCredentials, error) {
	ca, err := pki.NewCA("fakeo365 test CA")
	if err != nil {
		return nil, fmt.Errorf("fakeo365: %w", err)
	}
	cert, err := ca.Server(hostname)
	if err != nil {
		return nil, fmt.Errorf("fakeo365: %w", err)
	}
	return &tlsCredentials{cert: cert, caPEM: ca.PEM, pool: ca.Pool}, nil
}

func (c *tlsCredentials) serverConfig() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{c.cert},
		MinVersion:   tls.VersionTLS12,
	}
}
