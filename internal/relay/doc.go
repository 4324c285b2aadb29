// Package relay is the delivery engine: it takes messages from the MAIL
// stream, validates and renders them, submits them to Office 365 over
// pooled STARTTLS + AUTH XOAUTH2 sessions within the mailbox's limits, and
// then acks, retries, pauses the account or dead-letters.
//
// # Lanes: one per account, no head-of-line blocking
//
// The Engine follows the account registry (a KV watch on relay_accounts)
// and runs one lane per account. A lane owns:
//   - a durable pull consumer relay-mail-<alias> filtered on
//     mail.send.<alias> (every worker process binds the same one);
//   - a session pool of at most MaxConns connections (Office 365 allows 3
//     per mailbox), lowered by one after each 432 4.3.2 and raised again
//     one step per ThrottleRecover without one;
//   - the account's pause state.
//
// A lane pulls about what it can start (docs/design.md §7): free connection
// slots plus a small lookahead (16 messages, at most 1 MiB held), capped
// by the pacer's room in the current minute. A message fetched ahead is
// prepared at once — decoded, rendered, its markers read and its pacing
// reserved, heartbeats running — and waits for a session; preparing
// costs NATS round trips that take longer than a pipelined transaction,
// so without the lookahead a session idled through them (lane.go has the
// measurements). A waiting message whose account pauses goes back to the
// stream unsent, its reservation given back; so does one at shutdown. A
// slot is free again as soon as its message's last batch is accepted and
// the session is back in the pool; the marker, the pacing confirmation
// and the ack are then written while the slot carries the next message
// (the handler still ends only after them, and shutdown waits for
// handlers). Sessions in use never exceed the lane's limit. A paused lane
// pulls nothing, so its messages wait in the stream with their delivery
// count untouched, and no account's trouble — paused, throttled, slow or
// broken — delays another account, whose lane has its own consumer, pool
// and budget. The catch-all consumer relay-workers of earlier versions is
// deleted at start, since a WorkQueue stream refuses overlapping filters.
//
// Many accounts (issue 18: 2,000 on one relay). An idle lane costs what
// its pulls cost, so each pull that comes back empty doubles the next
// one's wait, from FetchWait (5s) to IdleFetchWait (60s), and a message
// resets it; the server hands a stored message to the waiting pull at
// once, so a long pull delays nothing. A pause ends the open pull. With
// 2,000 idle lanes relay serve (engine, embedded NATS, token service)
// then uses about 2 % of a core (5.4 % with 30 s pulls, 16 % with 5 s).
// MAIL allows 100,000 consumers (queue.MailMaxConsumers): nats-server's
// default limit of 1,000 per stream would leave the 1,001st account
// unbound. What one consumer per account still costs is in nats-server:
// every ack on a WorkQueue stream asks each of its consumers whether it
// still needs the message, under the stream's lock, so at 1,000 msg/s
// over 2,000 consumers a third of the process's CPU went there
// (BENCHMARKS.md, "Many mailboxes").
//
// Mail for an alias that is not registered has no lane. A sweeper looks
// for such subjects every SweepEvery (stream info with a subject filter)
// and, after UnknownGrace (so an account being created does not lose its
// first messages to the race with its lane starting), dead-letters them
// with reason `unknown account "<alias>"` through a temporary consumer on
// that exact subject, or, for a removed account, through its durable
// consumer while that still exists. A removed account's consumer is
// deleted only once it holds nothing (Engine.dropConsumer): another worker
// process may still be sending a message of it, and a consumer deleted
// under that process put the message back in mid-transaction, to be
// dead-lettered as unknown although it was sent, or sent again by the
// lane of the account added again. Through the durable consumer the
// sweeper gets only what no live process holds. A sweep whose dead letter
// MAIL_DLQ refused stops there, and the next waits on the Retry schedule
// by such sweeps in a row (at least SweepEvery).
//
// # Sessions
//
// The SMTP session layer is package submit: STARTTLS (mandatory),
// AUTH XOAUTH2, pipelined transactions, the session pool and the typed
// SMTP error with its class. Each lane keeps a submit.Pool sized to its
// connection limit and never reuses a session with another token than
// the current one. A pooled session that Office 365 closed while idle is
// noticed by the next transaction before the server took any of it
// (Session.NotStarted), and lane.send runs that transaction once more on
// another session — no retry delay, no copy.
//
// Every access token comes with the binding sealed with it at consent
// (token.Binding: SMTP endpoint, CA file, client id). Before a session is
// taken, pooled or new, the lane checks the account record it has from
// relay_accounts against it (lane.sessionFor): a record rewritten after
// consent gets no connection and no token, but a *token.BindingError
// naming the fields — class config, so the account pauses and its mail
// waits — an error log line and relay_account_binding_mismatch_total. A
// difference is confirmed only after asking the token service again
// (Tokens.Reload: a new consent may have bound new values since the token
// was cached) and waiting up to two seconds for the account record
// (consent writes it right after the token record). The session is asked
// for at the bound endpoint (Pool.GetFor), so an account change between
// the check and the dial cannot redirect the token. A
// change of the endpoint or client id of an account paused for its
// configuration is probed at once: restoring the record resumes delivery.
// A token without a binding (a token service of an earlier version) is
// used as before, with a warning.
//
// # Pacing
//
// Office 365 allows a mailbox 30 messages a minute and 10,000 recipients a
// rolling day (account.Account PerMinute, PerDay). pacing.Pacer keeps both
// windows in KV bucket relay_pacing (one key per mailbox, compare-and-set),
// so a restart or a second worker does not reset them: a transaction
// reserves before it starts, moves its reservation to now every 30 s
// while it runs (Office 365 counts it only at the end of DATA, which may
// come minutes later), and moves it to its acceptance time after the
// 250, so the relay's windows always contain Office 365's
// and neither 432 nor a quota reply is provoked. Concurrent updates of one
// mailbox in a process are group-committed: one compare-and-set carries
// every update that arrived while the previous write was in flight. The
// minute is counted in 1 s slots, each until its last acceptance (to the
// millisecond) has left the window when the process saw all of the slot's
// messages accepted, else until its end: so a mailbox offered exactly its
// 30 a minute does not fall further behind every minute (see internal/pacing).
// A short wait (within the minute) holds the message, heartbeats
// running; a longer one (the day's budget spent) pauses the account until the window has room. A message
// with more than 500 recipients is sent as several transactions of at
// most 500 (or the daily budget, if smaller), each paced on its own. The
// clock (internal/clock) is injectable: tests compress time for the pacer and the fake
// Office 365 alike.
//
// # Failure semantics
//
// Every error is classified once (submit.Classify at the SMTP boundary,
// token.IdentityError at the identity boundary, classify here for the
// rest; docs/office365.md §4) and its class alone picks the action
// (ActionFor):
//   - 250 for every batch: DoubleAck (the server confirmed the ack).
//   - retry (transient 4xx, network, timeouts, 530 5.7.57 with a new
//     session, 432 4.3.2 with one connection fewer, anything unknown):
//     a 530 after AUTH or a 421 to the transaction or its content (the
//     server has taken nothing) first goes once more at once on another
//     connection (lane.send), and only a second one is retried so;
//     NakWithDelay on the Retry schedule (jittered, capped exponential),
//     never a plain Nak, which burns MaxDeliver in milliseconds. At the
//     last delivery (MaxDeliver, counted here: the server's consumer has
//     no limit, queue.ServerMaxDeliver) a still-failing message is
//     dead-lettered with the last reply. A retry whose session could not
//     be opened (dial, STARTTLS or AUTH) also holds the lane: no message
//     of it takes a session until the hold ends (the Retry schedule by
//     such refusals in a row; a session opened ends it). If the dead
//     letter (or a paused account's requeue) is refused, the message is
//     nak'ed and delivered again, on the Retry schedule by deliveries, to
//     try once more; a server limit would have left it in the WorkQueue
//     stream unseen. From twice MaxDeliver on, a message is
//     dead-lettered without being tried (giveUp).
//   - 535 5.7.3: one forced token refresh and a new session; refused
//     again, the class is auth and the account pauses.
//   - pause (no usable token, SMTP AUTH disabled, XOAUTH2 refused, TLS too
//     old, quota, mailbox full, tenant blocked): the lane stops pulling;
//     the messages in flight go back with a short delay. The pause is
//     probed on the Pause schedule: a token request for identity
//     problems, a session (STARTTLS + AUTH, no message) for
//     authentication and configuration, one real message for quota,
//     mailbox full and tenant blocks — the rest wait for its result. A
//     needs_consent or rejected token also listens for the token
//     service's announcements (TokenEvents: token.stored; workers never
//     read relay_tokens themselves), so mail flows as soon as the
//     account is consented again. A tenant block pauses every account of
//     the tenant, matched by the tenant ID learnt at sign-in (the tid
//     claim: account.Account.TenantKey), whichever name each account's
//     tenant is configured by; an account without one is matched by its
//     tenant as configured (not "common", "organizations" or
//     "consumers", which name no one tenant: that account pauses alone).
//     The status's pause_tenant says which key matched. A message whose last delivery meets a pause is requeued
//     as a fresh message, never dead-lettered: waiting for an account is
//     not a reason to give mail up. The pause is per process; another
//     worker finds the condition on its own first attempt.
//   - dead-letter (the message itself can never go: bad input, 550 5.7.60
//     send-as refused under policy allow, 552, other 5xx): a copy with the
//     reason, class, attempts, last reply, original subject and sequence,
//     first and last attempt time goes to MAIL_DLQ, its PubAck is awaited,
//     then the original is terminated (queue.MoveToDLQ). The first attempt
//     time is the first this process saw; a message first tried by
//     another process or before a restart records when it was queued.
//
// # Idempotency
//
// Right after each 250 a marker is written to KV relay_sent (key from the
// account, the message id and the batch); before each transaction the
// marker is checked. A redelivered message whose batches are all marked is
// acked without sending (outcome "duplicate"); a partly sent one sends
// only the rest. The lookups of all of a message's batches go out
// together, on a first delivery beside the first batch's pacing
// reservation (a read and a
// write that do not depend on each other, so one round trip instead of
// two); when the markers show that batch already sent, the reservation is
// given back. The message id is the producer's id (kept across dead
// letter, replay and requeue in Relay-Message-Id), so the Message-ID
// header, derived from it, is stable too. Markers are read from the
// bucket's stream leader, not with a direct get, which a replica restarted
// and still catching up answers with what it had before its outage
// (SentMarkers.marker), and a write that fails is tried again before the
// ack, for up to 20 s (markRetry), so a leader election of relay_sent's
// stream does not leave the batch unmarked. One window remains: a crash
// (or a KV write that fails for longer) between Office 365's 250 and the
// marker write sends that batch again on redelivery. No protocol closes it — SMTP has no
// two-phase commit — so it is kept to one KV write per session: the
// session's next transaction may start while that marker is written, but
// its content's end (the final ".", after which Office 365 accepts) waits
// until the write is confirmed (lane.send, holdEnd). A crash thus repeats
// at most one message per session in use.
//
// One handler per stream message in a process (Engine.claim). JetStream
// hands a message out again while a handler here still has it when its
// AckWait ran out unrenewed (finish heartbeats nothing while a dead
// letter or a requeue waits for its PubAck; a NATS outage) or its
// consumer was made anew (an account removed and added again: the old
// lane's process deletes the consumer, holding nothing, just as the new
// lane binds it). That delivery is left
// unanswered: not sent — the first's marker may not be written yet —
// and not acked, nak'ed or terminated, which the server applies by
// stream sequence, to the first handler's message. The first handler's
// outcome stands for every delivery of it.
//
// # Shutdown
//
// When Run's context ends, lanes stop pulling at once; a message not yet
// in its SMTP transaction goes straight back (Nak); sends in flight get
// ShutdownGrace to finish, write their marker and be acked (those of an
// account removed just before as well: Run waits for its lane too);
// whatever is still running after that is cut and redelivered later (the
// markers catch any that went). Then every lane's idle sessions quit, all
// at once, so an Office 365 that no longer answers costs one QUIT timeout
// (2 s), not one per account. Long transactions heartbeat with InProgress
// at AckWait/3 so a slow server does not cause a redelivery under their
// feet.
//
// # Metrics
//
// metrics.go: relay_messages_total{account,outcome},
// relay_smtp_replies_total{account,code,class} (code bounded by
// submit.CodeLabel: a code no RFC defines counts as its class, "4xx"),
// relay_send_duration_seconds,
// relay_pacing_wait_seconds{account} (time each transaction waited for the
// pacer, on the engine's clock), relay_smtp_connections_total{account},
// relay_account_paused{account,reason} (one series per account: 1 with the
// pause class, or 0 with reason "none"), relay_account_pauses_total,
// relay_account_binding_mismatch_total{account} (at 0 from the lane's
// start, so an alert's increase() sees the first mismatch) and
// relay_smtp_sessions{account}, which is read from the pools on each
// scrape so it cannot drift from them.
package relay
