// Package ingress is Relay365's SMTP front door: the submission listener
// that Alertmanager, Grafana, Zabbix, printers and anything else that can
// only speak SMTP hand their mail to, and the producer identities that
// may use it. Behind it the mail goes the way every message goes: into
// the MAIL stream, through the account's lane, pacing, markers and
// dead letters.
//
// # The session
//
// The server is emersion/go-smtp. It offers PIPELINING (RFC 2920),
// 8BITMIME (RFC 6152), ENHANCEDSTATUSCODES (RFC 2034, RFC 3463), SIZE
// (RFC 1870) with Office 365's 35 MB limit, CHUNKING (RFC 3030) and
// STARTTLS (RFC 3207); the second listener speaks implicit TLS (RFC 8314
// §3.3). AUTH PLAIN (RFC 4616) and LOGIN are offered only over TLS. A
// producer authenticates as a name from KV relay_producers, whose
// password is kept only as an argon2id hash; it may send only through the
// accounts it lists.
//
// Which account carries a message: the producer's account whose mailbox
// or send-as list holds the envelope sender, else the From field's
// address, else the producer's first account. An address that belongs to
// an account the producer may not use is refused (550 5.7.1). The
// message is kept as the client sent it — raw RFC 5322 with a Received
// trace field added (and a Date field of the time of submission when it
// has none; a Message-ID field that is not one well-formed msg-id is
// logged, and replaced by the relay's stable one when the message is
// rendered, RFC 6409 §8.3, message.ValidMsgID), recipients from the
// envelope (so Bcc stays blind) —
// and the account's From policy applies when it is rendered, as for JSON
// messages. A message with no header field at all (an empty header
// section, as Go's net/smtp sends a bare body) is taken and leaves valid
// (RFC 5322 §3.6 requires From and Date): the Date above, and at
// rendering the From every message leaves with under any policy, the
// mailbox, and a Message-ID (RFC 6409 §8.2, §8.3;
// TestEmptyHeaderSectionLeavesAsAValidMessage). So does content without
// the empty line after its header section: a line that is neither a
// header field nor a continuation starts the body ("hello" alone is a
// body), and an entirely empty DATA is an empty header section and body,
// as relay sendmail and Postfix's cleanup read them (RFC 5322 §2.1;
// message.StartBody; TestContentWithoutAHeaderSectionIsTheBody). A field
// name followed by white space before its colon (RFC 5322 §4.5.3's
// obsolete syntax, "Subject : x") is written without it, as relay
// sendmail writes it (message.MendFieldNames).
// Before anything is queued the message is rendered once as the worker
// will render it, so a message that could never go (a From the
// policy refuses, no parseable header) is refused now, to the client that
// can still do something about it, instead of being dead-lettered later.
//
// # Large messages: streamed, and held to the account's limit
//
// A session holds at most streamBuffer (InlineMax + 64 KiB) of a DATA
// (data.go). A message that ends within it is checked whole and published
// inline, or past InlineMax stored from that buffer. A longer one must
// have its header section within the buffer: the checks above run on the
// header section alone, rendered as the worker renders a stored body
// (message.RenderBody), then the Received field, the buffer and the rest
// of DATA stream through body.Store.Put into the body store. So a 35 MB
// message costs the relay a bounded buffer, not 35 MB.
//
// Every message is held to its account's size limit
// (account.Account.SizeLimit, max_message_bytes, default 35 MB) counted
// as the worker will send it: the rendered header section plus the rest,
// which is what message.Rendered.Size gives the worker, so a message
// accepted here is never dead-lettered for its size. Put stops at the
// limit less what rendering adds; the rest of DATA is then read to its
// end to say the size in the 552, and the partial body is deleted. A
// SIZE= over the limit is refused at MAIL: the limit of the account the
// envelope sender picks, else the largest of the producer's accounts.
//
// # Replies and what they promise
//
//	250 2.0.0          the message is in the MAIL stream: JetStream's PubAck came
//	                   (with the embedded server's default, after an fsync)
//	451 4.3.0          NATS did not answer within the publish timeout: try again
//	452 4.3.1          the MAIL stream, or the body store a large message goes
//	                   to, is full: try again later
//	451 4.7.1          none of the producer's accounts is registered yet
//	530 5.7.0          MAIL before AUTH (RFC 4954 §6)
//	535 5.7.8          wrong name or password
//	538 5.7.11         AUTH before TLS (RFC 4954 §6); the password is not checked,
//	                   the attempt is counted (auth failures, reason cleartext)
//	454 4.7.0          too many failed logins from this address or for this name
//	501 5.5.2          an AUTH response the mechanism cannot read (RFC 4954 §4)
//	501 5.1.7          a sender address with a control character (RFC 5321 §4.1.2)
//	550 5.1.2          a recipient at an address literal, IPv4 or IPv6 (RFC 5321
//	                   §4.1.3): Office 365 delivers only to domain names
//	503 5.5.1          MAIL while a transaction is open (RFC 5321 §4.1.4); the
//	                   transaction is kept, and its recipients are the envelope's
//	550 5.7.1          an account or From the producer may not use
//	552 5.3.4          larger than the account's max_message_bytes as it would
//	                   be sent, or than the server's SIZE; says the size and
//	                   the limit (also at MAIL with SIZE=, RFC 1870 §6.1)
//	554 5.6.0          the message cannot be parsed, or its header section
//	                   does not end within the session's buffer
//	421 4.7.0          too many connections (in all, or from this address);
//	                   inside TLS on the implicit TLS port; while
//	                   connlimit.MaxRefusing refusals are being answered, a
//	                   further one is closed without a reply
//	421 4.4.2          the client stopped sending inside DATA for the session
//	                   timeout (which times each block, not the message), or
//	                   the connection failed there; the connection closes
//
// Nothing is acknowledged before it is stored, and nothing stored is
// refused: a client that gets no 250 (a timeout, a dropped connection, a
// relay killed mid-DATA) sends the message again, so mail is never lost,
// at the cost, rarely, of a copy (RFC 5321 §6.1, the duplicate problem
// every SMTP hop has).
//
// # Abuse
//
// Connections are bounded in all and per client address, every
// command has a read and write timeout, and a connection must
// authenticate within that timeout of its opening (loginListener), so a
// client that holds connections without sending, or sending only NOOPs,
// cannot exhaust the relay. Failed logins are
// counted per client address and per producer name with an exponential
// lockout (auth.go); an unknown name is checked against a decoy hash, so
// it fails as slowly as a wrong password and the time to fail does not
// tell which names exist; argon2id runs at most twice at once, and a password
// that matched is remembered as an HMAC for the life of the process, so a
// client that connects for every message costs one hash, not one per
// mail. Passwords are never logged; an AUTH refused during a lockout,
// which costs no hash and so comes as fast as a client sends, is logged
// at most once per 10 seconds (the metric counts every one).
//
// What go-smtp decides, and this package cannot change without a fork of
// it: MaxLineLength is one limit for command lines and DATA lines, so a
// command line may be 64 KiB where RFC 5321 §4.5.3.1.4 allows 512 (what
// the session keeps of one is bounded instead: the EHLO name in
// Received, an AUTH name in logs and the lockout); a quoted local part
// reaches the session unquoted ("a b"@x as a b@x); an unknown MAIL or
// RCPT parameter is answered 500 or 504 5.5.4, not §4.1.1.11's 555; a
// command out of order (RCPT before MAIL, DATA before RCPT, AUTH before
// EHLO) 502 5.5.1, not §4.1.4's 503; a
// BDAT refused before MAIL and RCPT discards its chunk under the line
// limit, so a chunk with a line past 64 KiB is read as commands from
// there; and the rest of a DATA refused early is read to its end
// without a size limit, within the read deadline last set.
//
// # Metrics
//
// relay_ingress_messages_total{producer,result},
// relay_ingress_auth_failures_total{reason}, relay_ingress_sessions and
// relay_ingress_refused_connections_total{limit,reply} (limit total or
// per_ip; reply 421, or none for a connection closed unanswered: past
// connlimit.MaxRefusing refusals running, or a failed implicit TLS
// handshake). Refused connections are logged at most one line per 10
// seconds, which says how many were not logged before it
// (not_logged_before); the counter has them all.
package ingress
