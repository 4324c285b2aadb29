package submit

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"

	"relay365/internal/termsafe"
)

// tlsProblem names what made a TLS handshake fail for good, "" when the
// failure may heal by itself (a reset, a timeout, an internal error) or
// the error is not a TLS handshake's. Each of these is the server's (or
// an interceptor's) configuration against the relay's, which retrying the
// message does not change: the account pauses and probes (ClassConfig),
// and Remedy says what to fix.
//
//   - "expired", "name", "authority", "certificate": the certificate does
//     not verify (RFC 5280 §6; RFC 6125 §6 for the name) or cannot be
//     used at all.
//   - "version": no protocol version in common: the relay offers TLS 1.2
//     and 1.3 only (RFC 8996 deprecates 1.0 and 1.1); the server answered
//     with a protocol_version alert (RFC 8446 §6.2, RFC 5246 §7.2.2) or
//     selected an older version.
//   - "cipher": no cipher suite (or group) in common: a handshake_failure
//     or insufficient_security alert (RFC 8446 §6.2), or the server chose
//     one the relay did not offer.
//   - "plaintext": the server answered 220 to STARTTLS (RFC 3207 §4) and
//     then did not speak TLS: its first record is not a TLS record
//     (RFC 8446 §5.1: a handshake or alert record with a 3.x version).
//     The address is not an SMTP server that does STARTTLS (a plaintext
//     proxy or load balancer, another protocol on the port); crypto/tls
//     tells this case apart by a RecordHeaderError that carries the
//     connection (its Conn field is set for this case only).
//
// crypto/tls gives the server's alerts no exported type outside QUIC
// (tls.AlertError is QUIC's): a received alert is a *net.OpError whose Op
// is "remote error" and whose Err prints crypto/tls's own text for the
// alert number. Those texts, and those of the client's own checks, are
// the standard library's, never the server's.
func tlsProblem(err error) string {
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		var ci x509.CertificateInvalidError
		var he x509.HostnameError
		var ua x509.UnknownAuthorityError
		switch {
		case errors.As(cv.Err, &ci) && ci.Reason == x509.Expired:
			return "expired"
		case errors.As(cv.Err, &he):
			return "name"
		case errors.As(cv.Err, &ua):
			return "authority"
		}
		return "certificate"
	}
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) && rh.Conn != nil {
		return "plaintext"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" && oe.Err != nil {
		switch oe.Err.Error() {
		case "tls: protocol version not supported":
			return "version"
		case "tls: handshake failure", "tls: insufficient security level":
			return "cipher"
		}
		return ""
	}
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "tls: server selected unsupported protocol version"):
		return "version"
	case strings.HasPrefix(msg, "tls: server chose an unconfigured cipher suite"),
		strings.HasPrefix(msg, "tls: server selected unsupported group"):
		return "cipher"
	case strings.HasPrefix(msg, "tls: failed to parse certificate from server"),
		strings.HasPrefix(msg, "tls: server's certificate contains an unsupported type of public key"),
		strings.HasPrefix(msg, "tls: server sent certificate containing RSA key larger than"):
		return "certificate"
	}
	return ""
}

// tlsRemedy says what a person does about a TLS handshake that failed
// for good (tlsProblem), "" for any other error. It names the server's
// certificate (subject, issuer, expiry: public, and what a person compares
// with the proxy or server they suspect), never anything of the account.
func tlsRemedy(err error) string {
	var cv *tls.CertificateVerificationError
	var leaf string
	if errors.As(err, &cv) && len(cv.UnverifiedCertificates) > 0 {
		c := cv.UnverifiedCertificates[0]
		// The names are the server's (or an interceptor's) text:
		// bounded, with control characters escaped (termsafe).
		name := func(s string) string { return termsafe.Shorten(termsafe.Line(s), 100) }
		leaf = fmt.Sprintf(" (the server's certificate: subject %q, issuer %q, valid until %s)",
			name(c.Subject.CommonName), name(c.Issuer.CommonName), c.NotAfter.UTC().Format("2006-01-02 15:04 MST"))
	}
	switch tlsProblem(err) {
	case "expired":
		return "the SMTP server's certificate has expired or is not yet valid" + leaf +
			": check this machine's clock; otherwise the server (or a TLS-inspecting proxy on the path) presents an old certificate"
	case "name":
		return "the SMTP server's certificate is not for the host the account dials" + leaf +
			": check the account's SMTP address (smtp.office365.com:587 for Exchange Online)"
	case "authority":
		return "the SMTP server's certificate is not signed by a CA this machine trusts" + leaf +
			": a TLS-inspecting proxy or firewall may be on the path (exempt smtp.office365.com from inspection), " +
			"or, for a private server, put its CA in the account's CA file"
	case "certificate":
		return "the SMTP server's certificate cannot be used" + leaf + ": check the account's SMTP address and CA file"
	case "version":
		return "the SMTP server (or a proxy on the path) offers no TLS 1.2 or newer, which the relay requires: " +
			"check the account's SMTP address, or update the server"
	case "cipher":
		return "the SMTP server (or a proxy on the path) has no TLS cipher suite in common with the relay (TLS 1.2 with ECDHE and AES-GCM or ChaCha20, or TLS 1.3): " +
			"check the account's SMTP address, or update the server's TLS configuration"
	case "plaintext":
		return "the SMTP server answered 220 to STARTTLS and then did not speak TLS: the account's SMTP address is not an SMTP server with STARTTLS " +
			"(a plaintext proxy or load balancer on the path, or another protocol's port): check the address (smtp.office365.com:587 for Exchange Online) and any proxy between"
	}
	return ""
}
