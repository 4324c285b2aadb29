// Package tokensvc is the token service "relay-tokens": a NATS micro
// service in front of token.Source, the proactive refresher that keeps
// every account's tokens alive, and the Client the workers use.
//
// # Endpoints
//
// All in micro's queue group "q", so each request is answered by exactly
// one replica:
//
//	token.get      {"account":"alerts"}
//	               → {"account","mailbox","access_token","expiry","issued",
//	                  "smtp_addr","ca_file","client_id"}
//	               refreshing first when the token is inside the margin;
//	               smtp_addr, ca_file and client_id are the binding sealed
//	               with the token, which the worker checks its account
//	               record against before it dials
//	token.refresh  {"account":"alerts","since":"<issued of the refused token>"}
//	               → same reply; a forced refresh (after SMTP 535 5.7.3),
//	               coalesced with any refresh in flight, and skipped when a
//	               token issued after "since" exists
//	token.status   {} or {"account":"alerts"}
//	               → {"instance","accounts":[AccountStatus...]}
//	               state, expiry, last refresh, last error, AADSTS codes,
//	               remedy; never a token or secret
//
// Errors are micro errors (headers Nats-Service-Error-Code and
// Nats-Service-Error) whose body is an ErrorBody: 424 carries the identity
// class (needs_consent, config_error, transient), AADSTS codes and remedy,
// from which Client rebuilds a *token.IdentityError; 404 an unknown
// account or missing tokens; 400 a bad request; 503 a temporary failure
// (among them another replica's refresh still running after LeaseWait).
//
// # Security
//
// token.get and token.refresh replies carry access tokens over NATS. Only
// the relay's own processes may publish to token.> and receive the replies
// (NATS user permissions on token.> and _INBOX.>, and TLS on the NATS
// connections). The sealing key is needed only where the role tokens runs.
//
// # Proactive refresh
//
// Each replica watches relay_accounts and relay_tokens (KV watches, no
// polling) and runs one schedule per account (refresher.go): refresh at
// expiry − margin + jitter, whether or not mail flows, so a refresh token
// never dies of its 90-day inactivity; back off after transient failures
// as recorded in the record (Retry-After honoured); wait for the lease of
// a replica that is refreshing, and take over when that lease ends if it
// died. The Source's single-flight and lease make it one refresh per
// account per expiry, whatever the number of replicas and requests.
//
// # Loud failures
//
// Every call to the identity platform made here increments
// relay_token_refresh_total{account,result} and publishes
// relay.events.token.refreshed or relay.events.token.refresh_failed (plus
// relay.events.account.consent_required on entering needs_consent, and
// when a worker reports, on token.smtp_refused, that Office 365 refused a
// token fresh from a forced refresh: token.Source.MarkSMTPRefused); a
// state change is logged with its AADSTS codes and remedy. The gauges
// relay_token_state{account,state},
// relay_token_expiry_timestamp_seconds{account} and
// relay_token_last_refresh_timestamp_seconds{account} follow the store, so every
// replica shows the same state, including a re-consent written by authtool.
//
// # Failure semantics of the client
//
// The client caches tokens in memory and asks again only within its margin
// of expiry or after ForceRefresh. It never caches errors: an account that
// needs consent is asked again on the next message, so mail flows as soon
// as the account is consented again, without a restart. No replica
// running, a timeout or a 503 is an ordinary temporary error.
package tokensvc
