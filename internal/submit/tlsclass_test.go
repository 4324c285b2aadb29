package submit_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"relay365/internal/pki"
	"relay365/internal/submit"
)

// selfSigned is a server certificate signed by its own key, for the names
// given (no others: not 127.0.0.1 unless asked) and valid from notBefore
// to notAfter, and a CA file that trusts it as a root.
func selfSigned(t *testing.T, names []string, ips []net.IP, notBefore, notAfter time.Time) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "self-signed test server"},
		DNSNames:     names, IPAddresses: ips,
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, caFile
}

// serverHelloTLS10 answers the client's hello with a ServerHello that
// selects TLS 1.0 (RFC 2246 §7.4.1.3), as an old server that ignores the
// client's versions does: record type 22, version 3.1; handshake type 2;
// server_version 3.1, 32 random bytes, no session id,
// TLS_RSA_WITH_AES_128_CBC_SHA, no compression.
func serverHelloTLS10(conn net.Conn) {
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(conn, hdr); err != nil {
		return
	}
	if _, err := io.CopyN(io.Discard, conn, int64(hdr[3])<<8|int64(hdr[4])); err != nil {
		return
	}
	body := append([]byte{3, 1}, make([]byte, 32)...)
	body = append(body, 0, 0x00, 0x2f, 0)
	hs := append([]byte{2, 0, 0, byte(len(body))}, body...)
	rec := append([]byte{22, 3, 1, 0, byte(len(hs))}, hs...)
	conn.Write(rec)
	io.Copy(io.Discard, conn) // until the client's alert and close
}

// plaintextAfterStartTLS reads the client's hello and answers it in
// plaintext, as a server that answered 220 to STARTTLS without speaking
// TLS does (a plaintext proxy, or another protocol on the port).
func plaintextAfterStartTLS(conn net.Conn) {
	io.ReadFull(conn, make([]byte, 5))
	io.WriteString(conn, "250 OK\r\n")
	io.Copy(io.Discard, conn) // until the client closes
}

// resetInHandshake reads the client's hello and resets the connection.
func resetInHandshake(conn net.Conn) {
	io.ReadFull(conn, make([]byte, 5))
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) // close with RST
	}
	conn.Close()
}

// TestTLSHandshakeFailureClasses: a TLS handshake the server (or
// something on the path) makes fail for good pauses the account with a
// remedy that says what to fix: a certificate that does not verify
// (another CA, expired, another name), no TLS 1.2 or newer, no cipher
// suite in common, a server that answers 220 to STARTTLS and then does
// not speak TLS. Each of those meets the same server at the next
// handshake, and as transient each queued message was dialled, refused
// and retried on its own schedule for its 50 deliveries before it was
// dead-lettered. A reset in the handshake stays transient. In no case
// does the server get AUTH or the token.
func TestTLSHandshakeFailureClasses(t *testing.T) {
	other, err := pki.NewCA("someone else's CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCert, err := other.Server()
	if err != nil {
		t.Fatal(err)
	}
	trusted, caFile := trustedTLS(t)
	loopback := []net.IP{net.IPv4(127, 0, 0, 1)}
	expired, expiredCA := selfSigned(t, nil, loopback, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	misnamed, misnamedCA := selfSigned(t, []string{"mail.example.org"}, nil, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	tls11 := trusted.Clone()
	tls11.MinVersion, tls11.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	noCipher := trusted.Clone()
	// RSA key exchange with an ECDSA certificate: nothing the relay
	// offers (crypto/tls dropped RSA key exchange from its defaults).
	noCipher.MaxVersion, noCipher.CipherSuites = tls.VersionTLS12, []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}

	for name, tc := range map[string]struct {
		srv    *recordingSMTP
		caFile string
		class  submit.Class
		remedy string
	}{
		"another CA":       {startSMTP(t, &recordingSMTP{starttls: &tls.Config{Certificates: []tls.Certificate{otherCert}}}), "", submit.ClassConfig, "not signed by a CA this machine trusts"},
		"expired":          {startSMTP(t, &recordingSMTP{starttls: &tls.Config{Certificates: []tls.Certificate{expired}}}), expiredCA, submit.ClassConfig, "expired"},
		"another name":     {startSMTP(t, &recordingSMTP{starttls: &tls.Config{Certificates: []tls.Certificate{misnamed}}}), misnamedCA, submit.ClassConfig, "not for the host"},
		"TLS 1.1 only":     {startSMTP(t, &recordingSMTP{starttls: tls11}), caFile, submit.ClassConfig, "no TLS 1.2 or newer"},
		"selects TLS 1.0":  {startSMTP(t, &recordingSMTP{handshake: serverHelloTLS10}), caFile, submit.ClassConfig, "no TLS 1.2 or newer"},
		"no common cipher": {startSMTP(t, &recordingSMTP{starttls: noCipher}), caFile, submit.ClassConfig, "no TLS cipher suite in common"},
		"plaintext":        {startSMTP(t, &recordingSMTP{handshake: plaintextAfterStartTLS}), caFile, submit.ClassConfig, "did not speak TLS"},
		"reset":            {startSMTP(t, &recordingSMTP{handshake: resetInHandshake}), caFile, submit.ClassTransient, "temporary"},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := (&submit.Transport{}).Dial(ctx, submit.Endpoint{Addr: tc.srv.ln.Addr().String(), CAFile: tc.caFile},
				"alerts@contoso.com", "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.c2VjcmV0.tls-probe")
			var se *submit.SMTPError
			if !errors.As(err, &se) {
				t.Fatalf("want an SMTP error, got %v", err)
			}
			remedy := submit.Remedy(se, "alerts@contoso.com")
			if se.Class != tc.class || se.Stage != "tls" || !strings.Contains(remedy, tc.remedy) {
				t.Errorf("got class %s at stage %s, remedy %q (%v); want class %s, a remedy saying %q", se.Class, se.Stage, remedy, err, tc.class, tc.remedy)
			}
			lines := tc.srv.received()
			for _, l := range lines {
				if strings.HasPrefix(strings.ToUpper(l), "AUTH") || strings.Contains(l, "c2VjcmV0") {
					t.Fatalf("the server received %q; all lines: %q", l, lines)
				}
			}
			if len(lines) == 0 || !strings.EqualFold(lines[len(lines)-1], "STARTTLS") {
				t.Fatalf("the server's last line is not STARTTLS: %q; the test proves nothing", lines)
			}
		})
	}
}
