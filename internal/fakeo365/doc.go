// Package fakeo365 is a local, in-process fake of the two Office 365 services
// Relay365 talks to: the Microsoft identity platform (Entra ID OAuth 2.0 v2
// endpoints, over HTTP) and the Exchange Online SMTP submission endpoint
// (smtp.office365.com:587, over TCP with STARTTLS and XOAUTH2). The tests and
// `relay sandbox` use it; its behaviour follows docs/office365.md.
//
// # Design
//
// Start binds two listeners on 127.0.0.1:0, one for each service, and returns a
// *Server that owns all state behind a single mutex. The state is small and
// every operation is short, so one lock keeps the invariants between the two
// services (tokens minted over HTTP are checked at SMTP AUTH) simple.
//
// Identity platform. Paths are /{tenant}/oauth2/v2.0/{authorize,token,devicecode};
// any tenant string is accepted and remembered on what is issued. Codes and
// tokens are opaque random strings (crypto/rand, base64url) looked up in maps,
// never JWTs, except the optional id_token (issued when scope has openid),
// which is an unsigned JWT (alg "none") carrying preferred_username and tid so a
// client can learn which mailbox consented, and in which tenant: tid is a
// GUID, as Entra's, the same for a tenant named by its domain or by that
// GUID (TenantID). Errors are Entra-shaped JSON:
// error, error_description ("AADSTS<n>: ..."), error_codes, timestamp,
// trace_id, correlation_id, error_uri and suberror. Sign-in is automatic:
// authorize redirects straight back with a code for login_hint (or
// Config.DefaultMailbox), and a device code is approved after
// Config.DeviceApproveAfter polls. Refresh tokens rotate on every use; like
// real Entra an old one stays usable unless Config.StrictRotation is set.
// Access tokens carry an audience taken from the scope: only tokens for an
// Outlook resource (https://outlook.office.com/SMTP.Send,
// https://outlook.office365.com/.default, ...) pass SMTP AUTH, so a token
// minted for Microsoft Graph fails there with 535 5.7.3 as it does for real.
//
// SMTP. A github.com/emersion/go-smtp server with a backend whose sessions
// implement AUTH (XOAUTH2, and LOGIN which always fails because Basic auth is
// retired). go-smtp advertises AUTH only after STARTTLS. The TLS certificate is
// issued at Start by a throw-away ECDSA P-256 CA written to Config.Dir/ca.pem.
// Every Office 365 policy rejection (send-as, quota, rate, concurrency,
// injected faults) is decided at the end of DATA after the whole message has
// been read, as Exchange Online does. Open connections are counted by wrapping
// the net.Listener, because go-smtp replaces the session at STARTTLS; the
// per-mailbox concurrency limit counts sessions that authenticated, which can
// only happen after STARTTLS and so once per connection.
//
// Time. Token lifetimes, refresh-token inactivity, device-code expiry and the
// sending rate windows all read Config.Now, so tests drive them with a fake
// clock instead of sleeping.
//
// Fault injection and observation methods (FailNextTokenCalls, DropNextData,
// Replies, WaitMessages, ...) let tests steer the fake and check what a client
// did without parsing logs. Replies a correct client never provokes are
// injected per stage (SetNextAuthReply, SetNextMailReply, SetNextDataReply);
// SetNextAuthChallenge refuses a token with the JSON error challenge of
// RFC 7628 §3.2.2 (Gmail's and Dovecot's way, not Office 365's);
// LoseNextReply accepts a message and closes before the 250;
// DelayNextData makes a slow server; SetRandomFaults draws 451s and dropped
// connections from a seeded generator for load tests; RevokeMailbox kills
// one mailbox's tokens (refresh and, as continuous access evaluation does,
// access); Connections counts accepted connections, so session reuse can
// be checked. Replies counts the non-2xx replies the fake itself
// decides (all the Office 365 specific ones); pure protocol errors generated
// inside go-smtp (bad syntax, commands out of order) are not counted.
package fakeo365
