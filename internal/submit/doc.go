// Package submit is the SMTP session layer between Relay365 and Office
// 365's submission endpoint: it opens authenticated sessions, runs mail
// transactions on them, keeps them in per-account pools, and turns every
// failure into one typed error with a class. It knows nothing of queues,
// retries or accounts' pause states: the delivery engine (internal/relay)
// maps each class to an action, and the consent step (internal/consent)
// sends its one test mail through the same code.
//
// # Sessions
//
// Transport.Dial connects, upgrades with STARTTLS (RFC 3207) and
// authenticates with AUTH XOAUTH2 (docs/office365.md §1). STARTTLS is
// mandatory — a server that does not offer it gets no AUTH and no mail,
// because AUTH carries a bearer token — with TLS 1.2 or newer and the
// certificate verified against the system roots plus the account's CA
// file. A Session then carries many transactions (RFC 5321 §3.3),
// pipelined when the server offers PIPELINING (RFC 2920, package
// smtpclient): MAIL, every RCPT and DATA in one write, then the content.
// A session is bound to the access token it authenticated with: XOAUTH2
// cannot re-authenticate a session (RFC 4954 §4 allows one AUTH), so a
// new token means a new session.
//
// # Pools
//
// A Pool keeps one account's idle sessions, most recently used first, and
// hands them out without a liveness round trip. A pooled session that the
// server closed while idle (421 4.4.2, or the connection is gone) fails
// its next transaction before the server took any of it
// (Session.NotStarted), and the caller may run that transaction again at
// once on another session. Sessions for an old token, endpoint or mailbox
// are closed instead of reused, as are sessions after an error that leaves
// them in doubt and sessions idle past the pool's idle time.
//
// # Errors
//
// Every failure is an *SMTPError: the stage (dial, tls, auth, rset, mail,
// rcpt, data, message), the reply code and enhanced code (RFC 3463) when
// there was a reply, the underlying error, and a Class decided here, once
// (Classify, ClassifyReply; the table is docs/office365.md §4). Network
// errors, timeouts and anything unknown are ClassTransient. Remedy says
// what a person does about each, for logs, /status and authtool.
package submit
